package agentcfg

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
)

func TestParseFailoverServers(t *testing.T) {
	tests := []struct {
		in   string
		want []string
		ok   bool
	}{
		{"", nil, true},
		{"  ", nil, true},
		{"10.0.0.2:61620", []string{"10.0.0.2:61620"}, true},
		{"a:1, b.example.com:2 ,[::1]:3", []string{"a:1", "b.example.com:2", "[::1]:3"}, true},
		{"a:1,a:1,b:2", []string{"a:1", "b:2"}, true}, // duplicates dropped
		{"a", nil, false},        // no port
		{"a:0", nil, false},      // port out of range
		{"a:65536", nil, false},  // port out of range
		{"a:x", nil, false},      // not a port
		{"a:1,,b:2", nil, false}, // empty entry
		{"-a:1", nil, false},     // not a host
		{"a b:1", nil, false},    // not a host
		{"::1:3", nil, false},    // IPv6 without brackets
		{"a:1;b:2", nil, false},  // wrong separator
		{"a:+1", nil, false},     // not digits
		{"a:1,b:2,", nil, false}, // trailing comma
		{"a:1\nb:2", nil, false}, // a line break is no separator
		{"a:1,\tb:2", []string{"a:1", "b:2"}, true},
	}
	for _, tt := range tests {
		got, err := ParseFailoverServers(tt.in)
		if (err == nil) != tt.ok || !slices.Equal(got, tt.want) {
			t.Errorf("ParseFailoverServers(%q) = %q, %v; want %q ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalidValue) {
			t.Errorf("%q: error without ErrInvalidValue: %v", tt.in, err)
		}
	}
	// Bounds: 16 entries, 1 KiB.
	var list []string
	for i := 1; i <= MaxFailoverServers; i++ {
		list = append(list, "h:"+strconv.Itoa(i))
	}
	if got, err := ParseFailoverServers(strings.Join(list, ",")); err != nil || len(got) != MaxFailoverServers {
		t.Fatalf("16 servers: %q %v", got, err)
	}
	if _, err := ParseFailoverServers(strings.Join(append(list, "h:17"), ",")); err == nil {
		t.Fatal("17 servers accepted")
	}
	long := strings.Repeat("a", 250) + ".b:1"
	if _, err := ParseFailoverServers(strings.Repeat(long+",", 4) + long); err == nil {
		t.Fatal("more than 1 KiB accepted")
	}
}

func TestParseReadsFailoverServers(t *testing.T) {
	a, err := Parse([]byte(sample + "failover_servers: \"10.0.0.2:61620,10.0.0.3:61620\"\n"))
	if err != nil || !slices.Equal(a.FailoverServers, []string{"10.0.0.2:61620", "10.0.0.3:61620"}) {
		t.Fatalf("%+v %v", a, err)
	}
	for _, in := range []string{"failover_servers:\n", "failover_servers: ~\n", "failover_servers: \"\"\n"} {
		if a, err := Parse([]byte(sample + in)); err != nil || a.FailoverServers != nil {
			t.Fatalf("%q: %+v %v", in, a, err)
		}
	}
	_, err = Parse([]byte(sample + "failover_servers: 10.0.0.2\n"))
	var ve *ValueError
	if !errors.As(err, &ve) || ve.Key != KeyFailoverServers || ve.Line != 5 {
		t.Fatalf("bad value: %v", err)
	}
	if _, err := Parse([]byte(sample + "failover_servers: [a:1]\n")); !errors.Is(err, ErrInvalidValue) {
		t.Fatalf("a sequence: %v", err)
	}
	if _, err := Parse([]byte(sample + "failover_servers: \"a:1\"\nfailover_servers: \"b:1\"\n")); !errors.Is(err, ErrDuplicateKey) {
		t.Fatalf("duplicate: %v", err)
	}
}

func TestEditFailoverServersKeepsEveryOtherByte(t *testing.T) {
	in := "# agent\r\nstomp_interface: 10.0.0.1 # primary\r\nfailover_id: " + testID + "\r\nfailover_epoch: 3\r\nfailover_sig: abcd\r\nlocal_interface: 10.9.9.9\r\n# end\r\n"
	out, err := EditFailoverServers([]byte(in), []string{"10.0.0.2:61620", "[::1]:61621"})
	if err != nil {
		t.Fatal(err)
	}
	want := in + "failover_servers: \"10.0.0.2:61620,[::1]:61621\"\r\n"
	if string(out) != want {
		t.Fatalf("got\n%q\nwant\n%q", out, want)
	}
	// Replaced in place, keeping its quoting and its comment.
	in2 := "stomp_interface: h\nfailover_servers: 'a:1' # learned\nk: v\n"
	out, err = EditFailoverServers([]byte(in2), []string{"b:2"})
	if err != nil || string(out) != "stomp_interface: h\nfailover_servers: 'b:2' # learned\nk: v\n" {
		t.Fatalf("%q %v", out, err)
	}
	// Emptied.
	out, err = EditFailoverServers([]byte(in2), nil)
	if err != nil || string(out) != "stomp_interface: h\nfailover_servers: '' # learned\nk: v\n" {
		t.Fatalf("%q %v", out, err)
	}
	// Equal lists (also in another spelling) and none on a file without the
	// key leave the bytes alone.
	in3 := "stomp_interface: h\nfailover_servers: a:1 , b:2\n"
	for _, c := range []struct {
		in   string
		list []string
	}{{in3, []string{"a:1", "b:2"}}, {"stomp_interface: h\n", nil}, {"stomp_interface: h\nfailover_servers:\n", nil}} {
		out, err := EditFailoverServers([]byte(c.in), c.list)
		if err != nil || !bytes.Equal(out, []byte(c.in)) {
			t.Fatalf("%q: %q %v", c.in, out, err)
		}
	}
	// A bad list is refused.
	if _, err := EditFailoverServers([]byte(in3), []string{"nope"}); !errors.Is(err, ErrBadUpdate) {
		t.Fatalf("bad list: %v", err)
	}
}

// The token rewrites leave failover_servers alone, and SetFailoverServers
// leaves the token alone.
func TestTokenEditAndServersEditAreIndependent(t *testing.T) {
	in := sample + "failover_servers: \"a:1\" # c\n"
	out, err := Edit([]byte(in), testUpdate)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "failover_servers: \"a:1\" # c\n") {
		t.Fatalf("token edit touched failover_servers:\n%s", out)
	}
	a, _ := Parse(out)
	out2, err := EditFailoverServers(out, []string{"b:2"})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := Parse(out2)
	b2 := b
	b2.FailoverServers = a.FailoverServers
	if !b2.Equal(a) || !slices.Equal(b.FailoverServers, []string{"b:2"}) {
		t.Fatalf("before %+v after %+v", a, b)
	}
}

func TestSetFailoverServers(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "address.yaml")
	in := sample + "failover_id: " + testID + "\nfailover_epoch: 4\n"
	writeFile(t, p, in)
	if err := os.Chmod(p, 0o640); err != nil {
		t.Fatal(err)
	}
	r := SetFailoverServers(p, []string{"10.0.0.2:61620"})
	if r.Outcome != Rewritten || r.Err != nil || !slices.Equal(r.After.FailoverServers, []string{"10.0.0.2:61620"}) || r.After.FailoverEpoch != 4 {
		t.Fatalf("%+v", r)
	}
	if got := readFile(t, p); got != in+"failover_servers: \"10.0.0.2:61620\"\n" {
		t.Fatalf("%q", got)
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o640 {
		t.Fatalf("mode %v", fi.Mode())
	}
	if r := SetFailoverServers(p, []string{"10.0.0.2:61620"}); r.Outcome != Unchanged {
		t.Fatalf("again: %+v", r)
	}
	// Invalid files are left byte-identical.
	bad := sample + "stomp_port: x\n"
	writeFile(t, p, bad)
	if r := SetFailoverServers(p, []string{"a:1"}); r.Outcome != Invalid || readFile(t, p) != bad {
		t.Fatalf("%+v", r)
	}
	if r := SetFailoverServers(p, []string{"a"}); r.Outcome != Failed || !errors.Is(r.Err, ErrBadUpdate) {
		t.Fatalf("%+v", r)
	}
	if r := SetFailoverServers(filepath.Join(dir, "missing.yaml"), nil); r.Outcome != Failed {
		t.Fatalf("%+v", r)
	}
}

// A concurrent token compare-and-swap and a failover_servers write never
// lose each other's change (both hold the file's lock).
func TestSetFailoverServersRacesCompareAndSwap(t *testing.T) {
	p := filepath.Join(t.TempDir(), "address.yaml")
	writeFile(t, p, sample)
	var wg sync.WaitGroup
	for i := 1; i <= 20; i++ {
		wg.Add(2)
		go func(e uint64) { defer wg.Done(); CompareAndSwap(p, withEpoch(e), false) }(uint64(i))
		go func(i int) { defer wg.Done(); SetFailoverServers(p, []string{"s:" + strconv.Itoa(i)}) }(i)
	}
	wg.Wait()
	r := SetFailoverServers(p, []string{"final:1"})
	a, err := ReadFile(p)
	if err != nil || a.FailoverEpoch != 20 || !slices.Equal(a.FailoverServers, []string{"final:1"}) || r.Outcome != Rewritten {
		t.Fatalf("%+v %v %+v", a, err, r)
	}
	if got := readFile(t, p); !strings.HasPrefix(got, "# agent\nstomp_interface: 10.0.0.2 # primary\nuse_ssl: 0\nlocal_interface: 10.9.9.9\n") {
		t.Fatalf("lost a byte of the original:\n%s", got)
	}
}

func FuzzEditFailoverServers(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s), "10.0.0.2:61620,[::1]:1")
		f.Add([]byte(s+"\nfailover_servers: 'a:1'\n"), "")
	}
	f.Fuzz(func(t *testing.T, data []byte, list string) {
		servers, err := ParseFailoverServers(list)
		if err != nil {
			return
		}
		out, err := EditFailoverServers(data, servers)
		if err != nil {
			if !isKnownErr(err) {
				t.Fatalf("error without a sentinel: %v", err)
			}
			return
		}
		before, err1 := Parse(data)
		after, err2 := Parse(out)
		if err1 != nil || err2 != nil {
			t.Fatalf("parse: %v %v\n%q", err1, err2, out)
		}
		if !slices.Equal(after.FailoverServers, servers) {
			t.Fatalf("reads %q, want %q", after.FailoverServers, servers)
		}
		after.FailoverServers = before.FailoverServers
		if !after.Equal(before) {
			t.Fatalf("token changed: %+v -> %+v", before, after)
		}
		d1, _ := load(data)
		d2, _ := load(out)
		if otherKeys(d1) != otherKeys(d2) {
			t.Fatal("other keys changed")
		}
		again, err := EditFailoverServers(out, servers)
		if err != nil || !bytes.Equal(again, out) {
			t.Fatalf("second edit not identical: %v", err)
		}
	})
}
