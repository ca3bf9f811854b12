// Package qga answers the few QEMU guest agent commands Ferry uses on the
// test guest's org.qemu.guest_agent.0 virtio-serial port: guest-sync,
// guest-sync-delimited, guest-ping and guest-info. It is a small handler of
// the protocol (JSON objects over a byte stream, 0xFF resets the parser),
// not qemu-ga.
package qga

import (
	"encoding/json"
	"fmt"
)

// Delimiter resets the parser when the host sends it and precedes the
// reply to guest-sync-delimited.
const Delimiter = 0xFF

// maxCommand bounds one command; a longer one is dropped.
const maxCommand = 64 << 10

// Version is what guest-info reports.
const Version = "ferry-guest-qga/1"

// commands are the supported commands, in guest-info's order.
var commands = []string{"guest-info", "guest-ping", "guest-sync", "guest-sync-delimited"}

// Parser splits a byte stream into top-level JSON objects.
type Parser struct {
	buf     []byte
	depth   int
	inStr   bool
	esc     bool
	tooLong bool
}

// Feed adds one byte; it returns a complete object when b ends one. A 0xFF
// byte (and an over-long object) discards what was collected.
func (p *Parser) Feed(b byte) []byte {
	if b == Delimiter {
		p.Reset()
		return nil
	}
	if p.depth == 0 && b != '{' {
		return nil // whitespace or junk between objects
	}
	if !p.tooLong {
		p.buf = append(p.buf, b)
		if len(p.buf) > maxCommand {
			p.tooLong, p.buf = true, p.buf[:0]
		}
	}
	switch {
	case p.esc:
		p.esc = false
	case p.inStr && b == '\\':
		p.esc = true
	case b == '"':
		p.inStr = !p.inStr
	case !p.inStr && b == '{':
		p.depth++
	case !p.inStr && b == '}':
		p.depth--
		if p.depth == 0 {
			obj, long := p.buf, p.tooLong
			p.buf, p.tooLong = nil, false
			if long {
				return nil
			}
			return obj
		}
	}
	return nil
}

// Reset discards a partial object.
func (p *Parser) Reset() { *p = Parser{} }

// Handler answers commands. Before, when set, runs before each command is
// answered (with its name): the test guest's "stop the kernel at the next
// guest agent contact" hooks in there.
type Handler struct {
	Before func(command string)
}

// errorReply is the protocol's error answer.
func errorReply(class, desc string) []byte {
	b, _ := json.Marshal(map[string]any{"error": map[string]string{"class": class, "desc": desc}})
	return append(b, '\n')
}

// Handle answers one command object (nil: nothing to send).
func (h Handler) Handle(obj []byte) []byte {
	var cmd struct {
		Execute   string          `json:"execute"`
		Arguments json.RawMessage `json:"arguments"`
		ID        json.RawMessage `json:"id"`
	}
	if err := json.Unmarshal(obj, &cmd); err != nil || cmd.Execute == "" {
		return errorReply("GenericError", "Invalid JSON command: want {\"execute\": ...}")
	}
	if h.Before != nil {
		h.Before(cmd.Execute)
	}
	switch cmd.Execute {
	case "guest-ping":
		return []byte("{\"return\": {}}\n")
	case "guest-sync", "guest-sync-delimited":
		var args struct {
			ID *json.Number `json:"id"`
		}
		if err := json.Unmarshal(cmd.Arguments, &args); err != nil || args.ID == nil {
			return errorReply("GenericError", "Parameter 'id' is missing")
		}
		if _, err := args.ID.Int64(); err != nil {
			return errorReply("GenericError", "Parameter 'id' expects an integer")
		}
		r := []byte(fmt.Sprintf("{\"return\": %s}\n", args.ID.String()))
		if cmd.Execute == "guest-sync-delimited" {
			r = append([]byte{Delimiter}, r...)
		}
		return r
	case "guest-info":
		type cmdInfo struct {
			Name    string `json:"name"`
			Enabled bool   `json:"enabled"`
		}
		info := struct {
			Version  string    `json:"version"`
			Commands []cmdInfo `json:"supported_commands"`
		}{Version: Version}
		for _, c := range commands {
			info.Commands = append(info.Commands, cmdInfo{c, true})
		}
		b, _ := json.Marshal(map[string]any{"return": info})
		return append(b, '\n')
	}
	return errorReply("CommandNotFound", fmt.Sprintf("The command %s has not been found", cmd.Execute))
}
