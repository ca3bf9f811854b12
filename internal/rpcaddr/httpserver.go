package rpcaddr

import (
	"net/http"
	"time"
)

// Limits every Ferry HTTP server applies (server and agent APIs).
const (
	// MaxRequestBytes bounds one RPC request message (the largest real
	// one, a VM spec, is a few KiB).
	MaxRequestBytes = 4 << 20
	// MaxHeaderBytes bounds a request's headers.
	MaxHeaderBytes = 64 << 10
	// ReadHeaderTimeout bounds how long a client may take to send its
	// request headers (a slow-loris client is cut off).
	ReadHeaderTimeout = 10 * time.Second
	// IdleTimeout closes keep-alive connections with no request.
	IdleTimeout = 2 * time.Minute
)

// NewHTTPServer returns an http.Server for h with Ferry's limits. There is
// no whole-request read or write timeout: streaming RPCs (console, watch)
// stay open for as long as their client wants; each RPC bounds its own
// work by its context.
func NewHTTPServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: ReadHeaderTimeout,
		IdleTimeout:       IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
	}
}
