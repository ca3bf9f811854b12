package cli

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/ferryvm/ferry/internal/auth"
	"github.com/ferryvm/ferry/internal/etcdembed"
	"github.com/ferryvm/ferry/internal/etcdtls"
	"github.com/ferryvm/ferry/internal/failover"
	"github.com/ferryvm/ferry/internal/leader"
	"github.com/ferryvm/ferry/internal/pki"
	"github.com/ferryvm/ferry/internal/replica"
	"github.com/ferryvm/ferry/internal/retention"
	"github.com/ferryvm/ferry/internal/rpcaddr"
	"github.com/ferryvm/ferry/internal/server"
	"github.com/ferryvm/ferry/internal/store"
	"github.com/spf13/cobra"
)

// serverFlags are the flags of `ferry server`.
type serverFlags struct {
	listen    []string
	advertise string
	name      string
	dataDir   string
	endpoints string
	// etcdTLS is the client TLS of an external etcd (--etcd-ca,
	// --etcd-cert, --etcd-key, --etcd-insecure); Insecure also covers the
	// embedded member's URLs.
	etcdTLS   etcdtls.Client
	leaderTTL time.Duration
	member    etcdembed.Member
	keep      retention.Policy
	caDir     string
	certTTL   time.Duration
	// metricsListen is the loopback address of the unauthenticated
	// metrics listener ("" for none).
	metricsListen string
}

func newServerCmd(g *globals) *cobra.Command {
	var f serverFlags
	var dc daemonConfig
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run a control-plane replica (API, placement, cluster state in etcd)",
		Long: "Run a control-plane replica. With no --etcd-endpoints it runs an embedded etcd in --data-dir:\n" +
			"a single member, or with --initial-cluster one member of a multi-member cluster.\n" +
			"With --etcd-endpoints it uses that etcd cluster. Every replica serves the API; one,\n" +
			"elected through etcd, runs the migration engine, and the others forward writes to it.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if printed, err := dc.load(cmd); printed || err != nil {
				return err
			}
			log, err := dc.logger()
			if err != nil {
				return err
			}
			return runServer(f, log)
		},
	}
	host, _ := os.Hostname()
	fl := cmd.Flags()
	dc.addFlags(fl, DefaultServerConfig)
	fl.StringSliceVar(&f.listen, "listen", []string{DefaultServer}, "API addresses (host:port or unix:///path), repeatable")
	fl.StringVar(&f.advertise, "advertise", "", "API URL other replicas forward to (default: the first bound --listen address)")
	fl.StringVar(&f.name, "name", "", "this replica's name (default: --etcd-name, else the host name "+host+")")
	fl.StringVar(&f.dataDir, "data-dir", "/var/lib/ferry/server", "state directory (embedded etcd data)")
	fl.StringVar(&f.endpoints, "etcd-endpoints", "", "comma-separated etcd client URLs; empty runs an embedded etcd")
	fl.StringVar(&f.etcdTLS.CA, "etcd-ca", "", "PEM CA file the external etcd's server certificates are verified against (https:// endpoints; default: the system's roots)")
	fl.StringVar(&f.etcdTLS.Cert, "etcd-cert", "", "PEM client certificate presented to the external etcd (with --etcd-key)")
	fl.StringVar(&f.etcdTLS.Key, "etcd-key", "", "PEM key of --etcd-cert")
	fl.BoolVar(&f.etcdTLS.Insecure, "etcd-insecure", false, "allow plaintext http:// etcd URLs (--etcd-endpoints, --initial-cluster, peer and client URLs) on other machines: the cluster's state crosses the network unencrypted")
	fl.DurationVar(&f.leaderTTL, "leader-ttl", leader.DefaultTTL, "lease TTL of the leader election: a dead leader is replaced within about this long")
	fl.StringVar(&f.member.Name, "etcd-name", "", "embedded etcd member name (with --initial-cluster)")
	fl.StringVar(&f.member.InitialCluster, "initial-cluster", "", "embedded etcd cluster: name=http://host:peerport,... for every member")
	fl.StringVar(&f.member.InitialClusterState, "initial-cluster-state", "new", "new, or existing to join a running cluster")
	fl.StringVar(&f.member.ListenPeer, "listen-peer", "", "embedded etcd peer URL(s) to listen on (with --initial-cluster)")
	fl.StringVar(&f.member.AdvertisePeer, "advertise-peer", "", "embedded etcd peer URL announced to the other members (default --listen-peer)")
	fl.StringVar(&f.member.ListenClient, "listen-client", "", "embedded etcd client URL(s) to listen on (with --initial-cluster)")
	fl.StringVar(&f.member.AdvertiseClient, "advertise-client", "", "embedded etcd client URL announced (default --listen-client)")
	fl.IntVar(&f.keep.Count, "keep-migrations", server.DefaultKeepMigrations, "finished migration records kept (0 = any number)")
	fl.DurationVar(&f.keep.Age, "keep-migrations-for", server.DefaultKeepMigrationsFor, "how long finished migration records are kept (0 = forever)")
	fl.StringVar(&f.caDir, "ca", "", "directory of the cluster CA (ca.crt, ca.key) shared by the replicas; default: the CA in etcd, created on first start in DATA/pki")
	fl.DurationVar(&f.certTTL, "agent-cert-ttl", server.DefaultAgentCertTTL, "validity of the certificates agents get (they renew at two thirds)")
	fl.StringVar(&f.metricsListen, "metrics-listen", "", "also serve /metrics over plain HTTP without authentication on this loopback address (127.0.0.1:9464), for a local Prometheus agent; the API's /metrics needs a viewer token")
	cmd.AddCommand(newServerStatusCmd(g))
	return cmd
}

func (f *serverFlags) validate() error {
	var errs []error
	if f.endpoints != "" && f.member.InitialCluster != "" {
		errs = append(errs, errors.New("--etcd-endpoints and --initial-cluster: give one (an external etcd, or an embedded member)"))
	}
	if f.member.InitialCluster == "" && (f.member.ListenPeer != "" || f.member.ListenClient != "" || f.member.Name != "") {
		errs = append(errs, errors.New("--etcd-name, --listen-peer, --listen-client: only with --initial-cluster"))
	}
	if f.endpoints != "" {
		if _, err := f.etcdTLS.Check(failover.Split(f.endpoints)); err != nil {
			errs = append(errs, err)
		}
	} else if f.etcdTLS.CA != "" || f.etcdTLS.Cert != "" || f.etcdTLS.Key != "" {
		errs = append(errs, errors.New("--etcd-ca, --etcd-cert, --etcd-key: only with --etcd-endpoints (embedded members use certificates from --ca DIR)"))
	}
	if f.endpoints == "" && f.dataDir == "" {
		errs = append(errs, errors.New("--data-dir: required for the embedded etcd (or pass --etcd-endpoints)"))
	}
	if f.leaderTTL < time.Second {
		errs = append(errs, fmt.Errorf("--leader-ttl: at least 1s, got %s", f.leaderTTL))
	}
	if err := f.keep.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("--keep-migrations/--keep-migrations-for: %w", err))
	}
	if f.metricsListen != "" {
		if err := server.CheckMetricsAddr(f.metricsListen); err != nil {
			errs = append(errs, err)
		}
	}
	if len(f.listen) == 0 {
		errs = append(errs, errors.New("--listen: at least one address"))
	}
	if f.name == "" {
		f.name = f.member.Name
	}
	if f.name == "" {
		f.name, _ = os.Hostname()
	}
	return errors.Join(errs...)
}

func runServer(f serverFlags, base *slog.Logger) error {
	if err := f.validate(); err != nil {
		return err
	}
	ctx, cancel := signalContext()
	defer cancel()
	log := base.With("component", "server", "replica", f.name)
	var eps []string
	var localMember string
	var etcdTLS *tls.Config
	var early *earlyCA
	switch {
	case f.endpoints != "":
		eps = failover.Split(f.endpoints)
		plain, err := f.etcdTLS.Check(eps)
		if err != nil {
			return err
		}
		if len(plain) > 0 {
			log.Warn("etcd traffic crosses the network in plaintext (--etcd-insecure)", "endpoints", plain)
		}
		if etcdTLS, err = f.etcdTLS.Config(eps); err != nil {
			return err
		}
	case f.member.InitialCluster != "":
		f.member.Dir = filepath.Join(f.dataDir, "etcd")
		f.member.Insecure = f.etcdTLS.Insecure
		if f.caDir != "" {
			// The member's certificate comes from the CA, so it must
			// exist before etcd starts.
			ca, created, err := pki.LoadOrCreateCA(f.caDir)
			if err != nil {
				return fmt.Errorf("cluster CA in --ca %s: %w", f.caDir, err)
			}
			f.member.CA = ca
			early = &earlyCA{ca: ca, created: created}
		}
		e, err := etcdembed.StartMember(ctx, f.member)
		if err != nil {
			return err
		}
		defer e.Close()
		if len(e.Plaintext) > 0 {
			log.Warn("etcd traffic crosses the network in plaintext (--etcd-insecure)", "urls", e.Plaintext)
		}
		eps = []string{e.Endpoint}
		etcdTLS = e.ClientTLS
		localMember = e.Endpoint
		log.Info("embedded etcd member ready", "member", f.member.Name, "endpoint", e.Endpoint, "dir", f.member.Dir, "tls", e.ClientTLS != nil)
	default:
		e, err := etcdembed.Start(ctx, filepath.Join(f.dataDir, "etcd"))
		if err != nil {
			return err
		}
		defer e.Close()
		eps = []string{e.Endpoint}
		log.Info("embedded etcd ready", "endpoint", e.Endpoint, "dir", filepath.Join(f.dataDir, "etcd"))
	}
	// The client outlives the stop signal (closed on return): a stopping
	// leader still writes its handed-over migration records.
	st, err := store.NewEtcdTLS(context.WithoutCancel(ctx), eps, etcdTLS)
	if err != nil {
		return err
	}
	defer st.Close()

	sec, err := serverSecurity(ctx, f, st, early, log)
	if err != nil {
		return err
	}
	var rep *replica.Replica
	srv := server.New(server.Config{
		Store:     st,
		Log:       log,
		Security:  sec,
		Retention: f.keep,
		Wrap:      func(h http.Handler) http.Handler { return rep.Handler(h) },
		Leading:   func() bool { return rep.Leading() },
	})
	urls := make(chan []string, 1)
	serveErr := make(chan error, 2) // the API's listeners and the metrics listener
	serving := 1
	sctx, stopServing := context.WithCancel(context.Background())
	defer stopServing()
	// The replica must exist before the first request; its URL is known
	// once the listeners are bound, so the election starts after that.
	rep, err = replica.New(replica.Config{Self: leader.Info{Name: f.name}, Store: st, Engine: srv, TTL: f.leaderTTL, LocalMember: localMember, Log: log})
	if err != nil {
		return err
	}
	go func() { serveErr <- srv.Serve(sctx, f.listen, func(u []string) { urls <- u }) }()
	var bound []string
	select {
	case bound = <-urls:
	case err := <-serveErr:
		return err
	}
	if f.metricsListen != "" {
		murl := make(chan string, 1)
		serving++
		go func() { serveErr <- srv.ServeMetrics(sctx, f.metricsListen, func(u string) { murl <- u }) }()
		select {
		case <-murl:
		case err := <-serveErr:
			return err
		}
	}
	self := leader.Info{Name: f.name, URL: f.advertise}
	if self.URL == "" {
		self.URL = bound[0]
	}
	rep.SetSelf(self)
	repDone := make(chan error, 1)
	// The replica runs until it has handed its migrations over: a stop
	// signal (ctx) first hands them over while it still leads.
	rctx, stopReplica := context.WithCancel(context.WithoutCancel(ctx))
	defer stopReplica()
	go func() { repDone <- rep.Run(rctx) }()
	select {
	case <-ctx.Done():
		hctx, hcancel := context.WithTimeout(context.Background(), server.HandOverWait)
		rep.HandOver(hctx)
		hcancel()
		stopReplica()
	case err := <-serveErr:
		cancel()
		stopReplica()
		<-repDone
		return err
	}
	// Resign first (the engine stops, another replica takes over), then
	// stop serving.
	rerr := <-repDone
	stopServing()
	var errs []error
	for range serving {
		errs = append(errs, <-serveErr)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return rerr
}

// earlyCA is the cluster CA loaded from --ca before the embedded etcd
// member started (its certificate is issued from it).
type earlyCA struct {
	ca      *pki.CA
	created bool
}

// serverSecurity loads (or on first start creates) the cluster CA, unless
// early already did, and returns the server's security settings. A new
// CA's fingerprint is logged, and an admin credential is written next to
// it (mode 0600): FERRY_CREDENTIALS=<that file> ferry token create --role operator.
func serverSecurity(ctx context.Context, f serverFlags, st *store.Etcd, early *earlyCA, log *slog.Logger) (*server.Security, error) {
	var ca *pki.CA
	var created bool
	var err error
	if early != nil {
		ca, created = early.ca, early.created
	} else if ca, created, err = auth.ClusterCA(ctx, st.Client(), f.dataDir, f.caDir); err != nil {
		return nil, fmt.Errorf("cluster CA: %w", err)
	}
	if created {
		dir := f.caDir
		if dir == "" {
			dir = filepath.Join(f.dataDir, "pki")
		}
		cred := filepath.Join(dir, "admin.json")
		c, k, err := ca.IssueKeyPair(pki.KindAdmin, "bootstrap-admin", server.ServerCertTTL)
		if err != nil {
			return nil, err
		}
		if err := rpcaddr.WriteEntry(cred, rpcaddr.Entry{CA: string(ca.CertPEM), Cert: string(c), Key: string(k)}); err != nil {
			return nil, fmt.Errorf("write the bootstrap admin credential: %w", err)
		}
		log.Info("cluster CA created", "fingerprint", ca.Fingerprint(), "dir", dir, "admin_credential", cred)
		fmt.Fprintf(os.Stderr, "cluster CA created: fingerprint %s\nadmin credential: %s (FERRY_CREDENTIALS=%s ferry token create --role operator)\n", ca.Fingerprint(), cred, cred)
	} else {
		log.Info("cluster CA", "fingerprint", ca.Fingerprint())
	}
	return &server.Security{CA: ca, Name: f.name, Tokens: auth.EtcdTokens{C: st.Client()}, CertTTL: f.certTTL}, nil
}
