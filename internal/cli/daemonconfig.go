package cli

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/ferryvm/ferry/internal/configfile"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// Default config files of the daemons (shipped by the package as conffiles);
// used when present and --config is not given.
const (
	DefaultServerConfig = "/etc/ferry/server.yaml"
	DefaultAgentConfig  = "/etc/ferry/agent.yaml"
)

// daemonConfig is the --config, --print-config and logging flags of a
// daemon command.
type daemonConfig struct {
	path      string
	def       string
	print     bool
	logFormat string
	logLevel  string
	// inherited are the parent's persistent flags that get a key too.
	inherited []string
}

func (d *daemonConfig) addFlags(fs *pflag.FlagSet, def string, inherited ...string) {
	d.def, d.inherited = def, inherited
	fs.StringVar(&d.path, "config", "", "YAML file whose keys are this command's flag names; flags given override it (default "+def+" if it exists)")
	fs.BoolVar(&d.print, "print-config", false, "print the effective configuration (file, then flags) as YAML and exit")
	fs.StringVar(&d.logFormat, "log-format", "text", "log format on stderr: text or json")
	fs.StringVar(&d.logLevel, "log-level", "info", "least severe level logged: debug, info, warn or error")
}

// flagSet is the flags that have config keys: the command's own and the
// named inherited ones (sharing their values).
func (d *daemonConfig) flagSet(cmd *cobra.Command) *pflag.FlagSet {
	fs := pflag.NewFlagSet(cmd.Name(), pflag.ContinueOnError)
	fs.AddFlagSet(cmd.LocalFlags())
	for _, n := range d.inherited {
		if f := cmd.Flags().Lookup(n); f != nil {
			fs.AddFlag(f)
		}
	}
	return fs
}

// load applies the config file to the flags the command line left unset.
// It reports whether --print-config printed the result (the command then
// exits without running).
func (d *daemonConfig) load(cmd *cobra.Command) (printed bool, err error) {
	fs := d.flagSet(cmd)
	path, optional := d.path, false
	if path == "" {
		path, optional = d.def, true
	}
	m, err := configfile.Load(path, optional)
	if err != nil {
		return false, err
	}
	if err := configfile.Apply(fs, m, path); err != nil {
		return false, err
	}
	if !d.print {
		return false, nil
	}
	b, err := configfile.Effective(fs)
	if err != nil {
		return false, err
	}
	if m != nil {
		fmt.Fprintf(cmd.OutOrStdout(), "# from %s and the command line\n", path)
	}
	_, err = cmd.OutOrStdout().Write(b)
	return true, err
}

// logger is the daemon's structured logger on stderr (journald keeps it
// under systemd).
func (d *daemonConfig) logger() (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(d.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level: debug, info, warn or error, got %q", d.logLevel)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch d.logFormat {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format: text or json, got %q", d.logFormat)
}
