// Command tandem keeps a management server highly available: a primary
// heartbeats, a backup takes over after a silence, agents are repointed and
// the old primary is fenced. See docs/ and `tandem --help`.
package main

import (
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// Exit codes, as the CLI contract defines them.
const (
	exitOK      = 0
	exitRuntime = 1
	exitUsage   = 2
	exitFenced  = 3
)

// A command is one `tandem NAME ...` subcommand. run gets the arguments after
// the name and returns the process exit code.
type command struct {
	name    string
	summary string
	run     func(args []string) int
}

var commands = map[string]command{}

// register is called from each subcommand file's init.
func register(name, summary string, run func(args []string) int) {
	if _, dup := commands[name]; dup {
		panic("tandem: command registered twice: " + name)
	}
	commands[name] = command{name: name, summary: summary, run: run}
}

func main() {
	os.Exit(dispatch(os.Args[1:], os.Stdout, os.Stderr))
}

func dispatch(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	switch args[0] {
	case "-h", "--help", "help":
		usage(stdout)
		return exitOK
	}
	c, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "tandem: unknown command %q (see tandem --help)\n", args[0])
		return exitUsage
	}
	return c.run(args[1:])
}

func usage(w io.Writer) {
	var names []string
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	b.WriteString("tandem keeps a management server highly available: a primary heartbeats,\n")
	b.WriteString("a backup takes over after a silence and repoints every agent's address.yaml.\n\n")
	b.WriteString("Usage: tandem COMMAND [flags]   (tandem COMMAND --help for its flags)\n\nCommands:\n")
	for _, n := range names {
		fmt.Fprintf(&b, "  %-12s %s\n", n, commands[n].summary)
	}
	b.WriteString("\nExit codes: 0 ok, 1 runtime failure, 2 bad usage/config/input, 3 fenced (a higher epoch exists).\n")
	io.WriteString(w, b.String())
}

// helpOut is where a command's flag set prints: stdout when help was asked
// for (so it can be piped to a pager), stderr for usage errors.
func helpOut(args []string, stdout, stderr io.Writer) io.Writer {
	for _, a := range args {
		switch a {
		case "-h", "-help", "--help":
			return stdout
		}
	}
	return stderr
}
