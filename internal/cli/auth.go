package cli

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"strings"
	"time"

	"connectrpc.com/connect"
	ferryv1 "github.com/ferryvm/ferry/gen/ferry/v1"
	"github.com/ferryvm/ferry/gen/ferry/v1/ferryv1connect"
	"github.com/ferryvm/ferry/internal/auth"
	"github.com/ferryvm/ferry/internal/failover"
	"github.com/ferryvm/ferry/internal/pki"
	"github.com/ferryvm/ferry/internal/rpcaddr"
	"github.com/spf13/cobra"
)

func (g *globals) auth() ferryv1connect.AuthServiceClient {
	hc, base := failover.Client(g.server)
	return ferryv1connect.NewAuthServiceClient(hc, base)
}

func newTokenCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "Issue tokens (admin)"}
	var role string
	var ttl time.Duration
	create := &cobra.Command{
		Use:   "create",
		Short: "Issue a token: a one-time agent join token, or a viewer/operator/admin bearer token",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := auth.ParseRole(role); err != nil {
				return fmt.Errorf("--%w", err)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 15*time.Second)
			defer cancel()
			resp, err := g.auth().CreateToken(ctx, connect.NewRequest(&ferryv1.CreateTokenRequest{Role: role, TtlSeconds: int64(ttl / time.Second)}))
			if err != nil {
				return err
			}
			fmt.Fprintln(g.stdout, resp.Msg.Token)
			fmt.Fprintf(g.stderr, "%s token, expires %s\n", resp.Msg.Role, resp.Msg.ExpiresAt.AsTime().UTC().Format(time.RFC3339))
			return nil
		},
	}
	create.Flags().StringVar(&role, "role", "", "agent (one-time join token), viewer, operator or admin")
	create.Flags().DurationVar(&ttl, "ttl", 0, "validity (default 1h for agent tokens, 24h for the others)")
	cmd.AddCommand(create)
	return cmd
}

func newLoginCmd(g *globals) *cobra.Command {
	var token string
	cmd := &cobra.Command{
		Use:   "login URL",
		Short: "Pin the cluster CA of the server at URL and store a token for it in the user's config",
		Long: "Connects to URL, checks that its CA has the fingerprint the token carries, checks the\n" +
			"token with the server, and stores the CA and token in the user's config\n" +
			"(" + rpcaddr.ConfigDir() + "/servers/); later commands against URL verify the server\n" +
			"against that CA and send the token.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			url := args[0]
			tok, err := readSecretArg(token)
			if err != nil {
				return fmt.Errorf("--token: %w", err)
			}
			fp, err := auth.CAPrefix(tok)
			if err != nil {
				return fmt.Errorf("--token: %w", err)
			}
			var seen *x509.Certificate
			ctx, cancel := context.WithTimeout(cmd.Context(), 15*time.Second)
			defer cancel()
			var who *ferryv1.WhoAmIResponse
			for _, a := range failover.Split(url) {
				hc, base := rpcaddr.ClientWith(a, &rpcaddr.Credentials{TLS: pki.PinnedTLS(fp, &seen), Token: tok})
				resp, err := ferryv1connect.NewAuthServiceClient(hc, base).WhoAmI(ctx, connect.NewRequest(&ferryv1.WhoAmIRequest{}))
				if err != nil {
					return fmt.Errorf("login to %s: %w", a, err)
				}
				who = resp.Msg
			}
			if who == nil || seen == nil {
				return fmt.Errorf("login: no server address in %q", url)
			}
			entry := rpcaddr.Entry{CA: string(pemOf(seen)), Token: tok}
			if err := rpcaddr.SaveUserEntry(url, entry); err != nil {
				return fmt.Errorf("store the credential: %w", err)
			}
			fmt.Fprintf(g.stdout, "logged in to %s as %s (role %s); cluster CA %s\n", url, who.Identity, who.Role, who.CaFingerprint)
			return nil
		},
	}
	cmd.Flags().StringVar(&token, "token", "", "token from `ferry token create` (or @FILE holding it)")
	_ = cmd.MarkFlagRequired("token")
	return cmd
}

func newWhoAmICmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "whoami",
		Short: "Show the identity and role the server sees",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 15*time.Second)
			defer cancel()
			resp, err := g.auth().WhoAmI(ctx, connect.NewRequest(&ferryv1.WhoAmIRequest{}))
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "%s role=%s ca=%s\n", resp.Msg.Identity, resp.Msg.Role, resp.Msg.CaFingerprint)
			return nil
		},
	}
}

func pemOf(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

// readSecretArg returns s, or the trimmed contents of FILE when s is "@FILE".
func readSecretArg(s string) (string, error) {
	if f, ok := strings.CutPrefix(s, "@"); ok {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		return strings.TrimSpace(string(b)), nil
	}
	return s, nil
}
