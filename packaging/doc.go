// Package packaging holds the Debian package's files (systemd units,
// default configs, the nfpm configuration) and the test that builds the
// package with hack/package.sh and inspects it.
package packaging
