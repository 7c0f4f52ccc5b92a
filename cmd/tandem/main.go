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
		if s := suggestCommand(args[0]); s != "" {
			fmt.Fprintf(stderr, "tandem: unknown command %q: did you mean %q? (see tandem --help)\n", args[0], s)
		} else {
			fmt.Fprintf(stderr, "tandem: unknown command %q (see tandem --help)\n", args[0])
		}
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
	b.WriteString("tandem keeps a management server highly available: a primary heartbeats to\n")
	b.WriteString("its backups; after a silence the best healthy backup takes over and repoints\nevery agent's address.yaml (tandem members lists the group).\n\n")
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

// suggestCommand is the registered command closest to name (edit
// distance at most 2, and less than half the name), or "" when none is:
// "stauts" gives "status", "histroy" "history".
func suggestCommand(name string) string {
	name = strings.ToLower(name)
	best, bestD := "", 1<<30
	for n := range commands {
		d := editDistance(name, n)
		if strings.HasPrefix(n, name) && len(name) >= 3 {
			d = 1 // "hist" → "history"
		}
		if d > 2 || 2*d >= len(n) {
			continue
		}
		if d < bestD || d == bestD && n < best {
			best, bestD = n, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance, counting a swap of two
// neighbouring letters ("stauts") as one edit.
func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	d := make([][]int, len(ra)+1)
	for i := range d {
		d[i] = make([]int, len(rb)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(ra); i++ {
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(ra)][len(rb)]
}
