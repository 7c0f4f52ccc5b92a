package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/tandem-ha/tandem/internal/fsutil"
	"github.com/tandem-ha/tandem/protocol"
)

func init() {
	register("keygen", "write the group's Ed25519 key pair: signing.key (servers) and signing.pub (agents)", func(a []string) int { return runKeygen(a, os.Stdout, os.Stderr) })
}

func runKeygen(args []string, stdout, stderr io.Writer) int {
	flags := flag.NewFlagSet("keygen", flag.ContinueOnError)
	flags.SetOutput(helpOut(args, stdout, stderr))
	out := flags.String("out", "", "`DIR` to write signing.key (mode 0600) and signing.pub into (created if missing)")
	ifMissing := flags.Bool("if-missing", false, "when DIR already holds both files, leave them and exit 0 (for provisioning scripts)")
	flags.Usage = func() {
		fmt.Fprint(flags.Output(), `Usage: tandem keygen --out DIR [--if-missing]

Writes a new group key pair. Every server of a group holds the same
DIR/signing.key (signing_key: in tandem.yaml) and signs every message with
it; agents get DIR/signing.pub (tandem agent --server-key) and can verify a
server's word but never mint one. An existing key is never overwritten:
replacing the group key means restarting every server and agent with the
new one (docs/runbook.md).

Flags:
`)
		flags.PrintDefaults()
	}
	if err := flags.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if *out == "" || flags.NArg() != 0 {
		fmt.Fprintln(stderr, "tandem keygen: give --out DIR")
		return exitUsage
	}
	keyPath, pubPath := filepath.Join(*out, "signing.key"), filepath.Join(*out, "signing.pub")
	if *ifMissing {
		_, kerr := protocol.LoadPrivateKey(keyPath)
		pub, perr := protocol.LoadPublicKey(pubPath)
		if kerr == nil && perr == nil {
			if k, _ := protocol.LoadPrivateKey(keyPath); !pub.Equal(k.Public()) {
				fmt.Fprintf(stderr, "tandem keygen: %s and %s are not one key pair\n", keyPath, pubPath)
				return exitUsage
			}
			fmt.Fprintf(stdout, "%s and %s exist: kept\n", keyPath, pubPath)
			return exitOK
		}
	}
	for _, p := range []string{keyPath, pubPath} {
		if _, err := os.Lstat(p); err == nil {
			fmt.Fprintf(stderr, "tandem keygen: %s exists; not overwriting a group key (remove it first if you mean to replace the key of every server and agent)\n", p)
			return exitUsage
		} else if !errors.Is(err, fs.ErrNotExist) {
			fmt.Fprintf(stderr, "tandem keygen: %s: %v\n", p, err)
			return exitRuntime
		}
	}
	if err := os.MkdirAll(*out, 0o700); err != nil {
		fmt.Fprintf(stderr, "tandem keygen: %s: %v\n", *out, err)
		return exitRuntime
	}
	pub, priv, err := protocol.GenerateKey()
	if err != nil {
		fmt.Fprintln(stderr, "tandem keygen:", err)
		return exitRuntime
	}
	kb, err := protocol.EncodePrivateKey(priv)
	if err != nil {
		fmt.Fprintln(stderr, "tandem keygen:", err)
		return exitRuntime
	}
	pb, err := protocol.EncodePublicKey(pub)
	if err != nil {
		fmt.Fprintln(stderr, "tandem keygen:", err)
		return exitRuntime
	}
	if err := fsutil.WriteFile(keyPath, kb, fsutil.Options{Perm: 0o600}); err != nil {
		fmt.Fprintf(stderr, "tandem keygen: %s: %v\n", keyPath, err)
		return exitRuntime
	}
	if err := fsutil.WriteFile(pubPath, pb, fsutil.Options{Perm: 0o644}); err != nil {
		fmt.Fprintf(stderr, "tandem keygen: %s: %v\n", pubPath, err)
		return exitRuntime
	}
	fmt.Fprintf(stdout, "wrote %s (mode 0600: copy it to every server, signing_key: in tandem.yaml)\n", keyPath)
	fmt.Fprintf(stdout, "wrote %s (give it to every agent: tandem agent --server-key %s)\n", pubPath, pubPath)
	return exitOK
}
