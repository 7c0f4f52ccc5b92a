package agentcfg

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

const (
	testID  = "0b0a3e7c-5b1e-4a39-9d57-2f1c58a1c9e0"
	testID2 = "6f9619ff-8b86-d011-b42d-00c04fc964ff"
)

var testUpdate = Update{StompInterface: "10.0.0.2", StompPort: 61620, FailoverID: testID, Epoch: 7}

func TestParse(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want Address
		err  string // substring of the error; "" = success
		is   error
	}{
		{"minimal", "stomp_interface: host1\n", Address{StompInterface: "host1", StompPort: DefaultPort}, "", nil},
		{"all keys", "stomp_interface: 10.0.0.1\nstomp_port: 61621\nuse_ssl: 1\nfailover_id: " + testID + "\nfailover_epoch: 42\n",
			Address{"10.0.0.1", 61621, true, testID, 42, true, "", nil}, "", nil},
		{"quoted", "stomp_interface: \"h\"\nstomp_port: '61621'\nuse_ssl: \"true\"\nfailover_epoch: \"3\"\n",
			Address{"h", 61621, true, "", 3, true, "", nil}, "", nil},
		{"uppercase uuid", "stomp_interface: h\nfailover_id: " + strings.ToUpper(testID) + "\n",
			Address{StompInterface: "h", StompPort: DefaultPort, FailoverID: testID}, "", nil},
		{"ipv6", "stomp_interface: \"::1\"\n", Address{StompInterface: "::1", StompPort: DefaultPort}, "", nil},
		{"use_ssl false", "stomp_interface: h\nuse_ssl: false\n", Address{StompInterface: "h", StompPort: DefaultPort}, "", nil},
		{"null epoch is absent", "stomp_interface: h\nfailover_epoch:\n", Address{StompInterface: "h", StompPort: DefaultPort}, "", nil},
		{"epoch 0", "stomp_interface: h\nfailover_epoch: 0\n", Address{StompInterface: "h", StompPort: DefaultPort, HasEpoch: true}, "", nil},
		{"max epoch", "stomp_interface: h\nfailover_epoch: 18446744073709551615\n", Address{StompInterface: "h", StompPort: DefaultPort, FailoverEpoch: 1<<64 - 1, HasEpoch: true}, "", nil},
		{"alias", "x: &p 61000\nstomp_interface: h\nstomp_port: *p\n", Address{StompInterface: "h", StompPort: 61000}, "", nil},
		{"crlf", "stomp_interface: h\r\nstomp_port: 1\r\n", Address{StompInterface: "h", StompPort: 1}, "", nil},
		{"flow", "{stomp_interface: h, stomp_port: 2}", Address{StompInterface: "h", StompPort: 2}, "", nil},
		{"bom", "\ufeffstomp_interface: h\n", Address{StompInterface: "h", StompPort: DefaultPort}, "", nil},

		{"empty", "", Address{}, "stomp_interface: required", ErrRequired},
		{"only comments", "# c\n\n# d\n", Address{}, "stomp_interface: required", ErrRequired},
		{"empty host", "stomp_interface: ''\n", Address{}, "stomp_interface: required", ErrRequired},
		{"bad port", "stomp_interface: h\nstomp_port: abc\n", Address{}, `stomp_port: expected an integer 1-65535, got "abc"`, ErrInvalidValue},
		{"port 0", "stomp_interface: h\nstomp_port: 0\n", Address{}, `stomp_port: expected an integer 1-65535, got "0"`, ErrInvalidValue},
		{"port big", "stomp_interface: h\nstomp_port: 65536\n", Address{}, `stomp_port: expected an integer 1-65535, got "65536"`, ErrInvalidValue},
		{"port negative", "stomp_interface: h\nstomp_port: -1\n", Address{}, `stomp_port: expected an integer`, ErrInvalidValue},
		{"bad ssl", "stomp_interface: h\nuse_ssl: yes\n", Address{}, `use_ssl: expected 0, 1, true or false, got "yes"`, ErrInvalidValue},
		{"bad uuid", "stomp_interface: h\nfailover_id: nope\n", Address{}, `failover_id: expected a canonical UUID`, ErrInvalidValue},
		{"braced uuid", "stomp_interface: h\nfailover_id: \"{" + testID + "}\"\n", Address{}, `failover_id: expected a canonical UUID`, ErrInvalidValue},
		{"bad epoch", "stomp_interface: h\nfailover_epoch: -3\n", Address{}, `failover_epoch: expected an unsigned integer, got "-3"`, ErrInvalidValue},
		{"epoch overflow", "stomp_interface: h\nfailover_epoch: 18446744073709551616\n", Address{}, `failover_epoch: expected an unsigned integer`, ErrInvalidValue},
		{"bad host", "stomp_interface: 'a b'\n", Address{}, `stomp_interface: expected a host name or IP address, got "a b"`, ErrInvalidValue},
		{"host mapping", "stomp_interface: {a: 1}\n", Address{}, `stomp_interface: expected a scalar, got "mapping"`, ErrInvalidValue},
		{"list root", "- a\n- b\n", Address{}, "top level is not a mapping", ErrNotMapping},
		{"scalar root", "hello\n", Address{}, "top level is not a mapping", ErrNotMapping},
		{"dup epoch", "stomp_interface: h\nfailover_epoch: 1\nfailover_epoch: 9\n", Address{}, "duplicate key: failover_epoch (lines 2 and 3)", ErrDuplicateKey},
		{"two docs", "stomp_interface: h\n---\nstomp_interface: g\n", Address{}, "more than one YAML document", ErrMultipleDocuments},
		{"syntax", "stomp_interface: [\n", Address{}, "YAML syntax error", ErrSyntax},
		{"utf8", "stomp_interface: h\n# \xff\n", Address{}, "not valid UTF-8 (first bad byte at offset 21)", ErrInvalidUTF8},
		{"merge", "base: &b {stomp_interface: h}\n<<: *b\n", Address{}, "merge key", ErrUnsupported},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse([]byte(tt.in))
			if tt.err == "" {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				if !got.Equal(tt.want) {
					t.Fatalf("Parse = %+v, want %+v", got, tt.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("Parse error = %v, want it to contain %q", err, tt.err)
			}
			if !errors.Is(err, tt.is) {
				t.Fatalf("error %v is not %v", err, tt.is)
			}
		})
	}
}

// TestEditGolden checks exact output bytes for the real-world variants.
func TestEditGolden(t *testing.T) {
	u := testUpdate
	tail := "failover_id: " + testID + "\nfailover_epoch: 7\n"
	tests := []struct{ name, in, want string }{
		{"empty file", "", "stomp_interface: 10.0.0.2\nstomp_port: 61620\n" + tail},
		{"only comments", "# agent config\n\n# end\n", "# agent config\n\n# end\nstomp_interface: 10.0.0.2\nstomp_port: 61620\n" + tail},
		{"no final newline", "stomp_interface: 10.0.0.1", "stomp_interface: 10.0.0.2\nstomp_port: 61620\n" + tail},
		{"comment without final newline", "stomp_interface: h # old\n# end", "stomp_interface: 10.0.0.2 # old\n# end\nstomp_port: 61620\n" + tail},
		{"typical",
			"# OpsCenter agent\nstomp_interface: 10.0.0.1   # primary\nuse_ssl: 0\n\n# local stuff\nagent_rpc_interface: 0.0.0.0\nlocal_interface: \"10.1.1.1\"\n",
			"# OpsCenter agent\nstomp_interface: 10.0.0.2   # primary\nuse_ssl: 0\n\n# local stuff\nagent_rpc_interface: 0.0.0.0\nlocal_interface: \"10.1.1.1\"\nstomp_port: 61620\n" + tail},
		{"all present",
			"stomp_interface: a\nstomp_port: 1\nuse_ssl: 1\nfailover_id: " + testID2 + " # id\nfailover_epoch: 3\nz: 1\n",
			"stomp_interface: 10.0.0.2\nstomp_port: 61620\nuse_ssl: 1\nfailover_id: " + testID + " # id\nfailover_epoch: 7\nz: 1\n"},
		{"quoted kept",
			"stomp_interface: \"a\"\nstomp_port: '1'\nfailover_id: '" + testID2 + "'\nfailover_epoch: \"3\"\n",
			"stomp_interface: \"10.0.0.2\"\nstomp_port: '61620'\nfailover_id: '" + testID + "'\nfailover_epoch: \"7\"\n"},
		{"crlf",
			"# c\r\nstomp_interface: a\r\nx: y\r\n",
			"# c\r\nstomp_interface: 10.0.0.2\r\nx: y\r\nstomp_port: 61620\r\nfailover_id: " + testID + "\r\nfailover_epoch: 7\r\n"},
		{"crlf no final newline", "stomp_interface: a\r\nx: y", "stomp_interface: 10.0.0.2\r\nx: y\r\nstomp_port: 61620\r\nfailover_id: " + testID + "\r\nfailover_epoch: 7\r\n"},
		{"tabs", "stomp_interface:\t a\t# t\nstomp_port:\t61620\nfailover_id: " + testID + "\nfailover_epoch:\t6\n",
			"stomp_interface:\t 10.0.0.2\t# t\nstomp_port:\t61620\nfailover_id: " + testID + "\nfailover_epoch:\t7\n"},
		{"empty values", "stomp_interface:\nstomp_port:\nfailover_id:   # set by tandem\nfailover_epoch: ~\n",
			"stomp_interface: 10.0.0.2\nstomp_port: 61620\nfailover_id: " + testID + "   # set by tandem\nfailover_epoch: 7\n"},
		{"value on next line", "stomp_interface:\n  a\nk: v\n", "stomp_interface:\n  10.0.0.2\nk: v\nstomp_port: 61620\n" + tail},
		{"indented root", "  stomp_interface: a\n  k: v\n", "  stomp_interface: 10.0.0.2\n  k: v\n  stomp_port: 61620\n  failover_id: " + testID + "\n  failover_epoch: 7\n"},
		{"document marker", "---\nstomp_interface: a\n", "---\nstomp_interface: 10.0.0.2\nstomp_port: 61620\n" + tail},
		{"document end marker", "---\nstomp_interface: a\n... # end\n# trailing\n", "---\nstomp_interface: 10.0.0.2\nstomp_port: 61620\n" + tail + "... # end\n# trailing\n"},
		{"bare document marker", "---\n", "---\nstomp_interface: 10.0.0.2\nstomp_port: 61620\n" + tail},
		{"nested same names untouched", "nested:\n  stomp_interface: x\n  failover_epoch: 1\nstomp_interface: a\n",
			"nested:\n  stomp_interface: x\n  failover_epoch: 1\nstomp_interface: 10.0.0.2\nstomp_port: 61620\n" + tail},
		{"flow replace", "{stomp_interface: a, stomp_port: 2, failover_id: " + testID2 + ", failover_epoch: 1, x: y}",
			"{stomp_interface: 10.0.0.2, stomp_port: 61620, failover_id: " + testID + ", failover_epoch: 7, x: y}"},
		{"unicode before value", "é: ü\nstomp_interface: ñame-old # ünï\n", "é: ü\nstomp_interface: 10.0.0.2 # ünï\nstomp_port: 61620\n" + tail},
		{"bom", "\ufeffstomp_interface: a\n", "\ufeffstomp_interface: 10.0.0.2\nstomp_port: 61620\n" + tail},
		{"alias value replaced, anchor kept", "p: &p 5\nstomp_port: *p\nstomp_interface: a\n", "p: &p 5\nstomp_port: 61620\nstomp_interface: 10.0.0.2\nfailover_id: " + testID + "\nfailover_epoch: 7\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Edit([]byte(tt.in), u)
			if err != nil {
				t.Fatalf("Edit: %v", err)
			}
			if string(got) != tt.want {
				t.Fatalf("Edit =\n%q\nwant\n%q", got, tt.want)
			}
			// Idempotent: editing the result again changes nothing.
			again, err := Edit(got, u)
			if err != nil || !bytes.Equal(again, got) {
				t.Fatalf("second Edit = %q, %v; want unchanged", again, err)
			}
		})
	}
}

func TestEditHostNeedsQuoting(t *testing.T) {
	for _, host := range []string{"::1", "fe80::1", "123", "true", "null", "1.5", "1e3", "0x1f"} {
		u := testUpdate
		u.StompInterface = host
		got, err := Edit([]byte("stomp_interface: a\n"), u)
		if err != nil {
			t.Fatalf("%s: %v", host, err)
		}
		a, err := Parse(got)
		if err != nil || a.StompInterface != host {
			t.Fatalf("%s: %q parses to %+v, %v", host, got, a, err)
		}
	}
}

func TestEditUnchangedIsByteIdentical(t *testing.T) {
	in := "# c\r\nstomp_interface: \"10.0.0.2\"  # x\r\nstomp_port: '61620'\r\nuse_ssl: 1\r\nfailover_id: " +
		strings.ToUpper(testID) + "\r\nfailover_epoch: 007\r\nother: [1, 2]\r\n# end"
	got, err := Edit([]byte(in), testUpdate)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != in {
		t.Fatalf("Edit changed an equal file:\n%q", got)
	}
}

func TestEditErrors(t *testing.T) {
	tests := []struct {
		name, in string
		is       error
	}{
		{"list root", "- a\n", ErrNotMapping},
		{"scalar root", "just text", ErrNotMapping},
		{"utf8", "stomp_interface: h\xc3\x28\n", ErrInvalidUTF8},
		{"dup", "stomp_interface: a\nstomp_interface: b\n", ErrDuplicateKey},
		{"flow append", "{stomp_interface: a}", ErrUnsupported},
		{"block scalar", "stomp_interface: |\n  a\n", ErrUnsupported},
		{"anchored", "stomp_interface: &h a\nx: *h\n", ErrUnsupported},
		{"tagged", "stomp_interface: !!str a\n", ErrUnsupported},
		{"multiline plain", "stomp_interface: a\n  b\n", ErrUnsupported},
		{"sequence value", "failover_epoch: [1]\n", ErrUnsupported},
		{"bad use_ssl", "stomp_interface: a\nuse_ssl: maybe\n", ErrSelfCheck},
		{"two docs", "a: 1\n---\nb: 2\n", ErrMultipleDocuments},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Edit([]byte(tt.in), testUpdate)
			if !errors.Is(err, tt.is) {
				t.Fatalf("Edit = %q, %v; want error %v", got, err, tt.is)
			}
		})
	}
	// An invalid update.
	for _, u := range []Update{
		{StompInterface: "", StompPort: 1, FailoverID: testID},
		{StompInterface: "h", StompPort: 0, FailoverID: testID},
		{StompInterface: "h", StompPort: 1, FailoverID: ""},
		{StompInterface: "a b", StompPort: 1, FailoverID: testID},
	} {
		if _, err := Edit([]byte("stomp_interface: a\n"), u); !errors.Is(err, ErrBadUpdate) {
			t.Fatalf("Edit(%+v) = %v, want ErrBadUpdate", u, err)
		}
	}
}

func TestEditLargeFile(t *testing.T) {
	var b strings.Builder
	b.WriteString("# big\nstomp_interface: a # keep\n")
	for i := 0; b.Len() < 1<<20; i++ {
		b.WriteString("key_")
		b.WriteString(strings.Repeat("x", i%40))
		b.WriteString(string(rune('a' + i%26)))
		b.WriteString(": \"value with: colon # and hash\" # comment\n")
		if i%100 == 0 {
			b.WriteString("\n# section\n")
		}
	}
	// Make keys unique enough by appending a counter section.
	in := []byte(b.String())
	got, err := Edit(in, testUpdate)
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Replace(string(in), "stomp_interface: a # keep", "stomp_interface: 10.0.0.2 # keep", 1) +
		"stomp_port: 61620\nfailover_id: " + testID + "\nfailover_epoch: 7\n"
	if string(got) != want {
		t.Fatal("1 MB file: unexpected edit")
	}
}

func TestFailoverSigIsWrittenAndRead(t *testing.T) {
	sig := strings.Repeat("ab", 64)
	in := []byte("# agent\nstomp_interface: 10.0.0.1 # keep me\nother: x\n")
	u := testUpdate
	u.FailoverSig = sig
	out, err := Edit(in, u)
	if err != nil {
		t.Fatal(err)
	}
	a, err := Parse(out)
	if err != nil || a.FailoverSig != sig || !strings.Contains(string(out), "# keep me") || !strings.Contains(string(out), "other: x") {
		t.Fatalf("%q %+v %v", out, a, err)
	}
	// A later rewrite replaces it in place.
	u.Epoch++
	u.FailoverSig = strings.Repeat("cd", 64)
	out2, err := Edit(out, u)
	if err != nil || strings.Count(string(out2), "failover_sig") != 1 || !strings.Contains(string(out2), u.FailoverSig) {
		t.Fatalf("%q %v", out2, err)
	}
	if _, err := Parse([]byte("stomp_interface: h\nfailover_sig: not-hex!\n")); err == nil || !strings.Contains(err.Error(), "failover_sig") {
		t.Fatalf("a garbage failover_sig: %v", err)
	}
}
