package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParsePrimaryLocation(t *testing.T) {
	cases := []struct {
		in   string
		host string
		port int
		err  string
	}{
		{"10.0.0.1", "10.0.0.1", 61620, ""},
		{"10.0.0.1:7000", "10.0.0.1", 7000, ""},
		{"  opsc-a.example.com \n", "opsc-a.example.com", 61620, ""},
		{"opsc_a:1", "opsc_a", 1, ""},
		{"[::1]:61620", "::1", 61620, ""},
		{"[::1]", "::1", 61620, ""},
		{"::1", "::1", 61620, ""},
		{"fe80::1", "fe80::1", 61620, ""},
		{"", "", 0, "empty"},
		{"   ", "", 0, "empty"},
		{"host:", "", 0, "port"},
		{"host:0", "", 0, "port 0"},
		{"host:65536", "", 0, "0-65535"},
		{"host:-1", "", 0, "not a number"},
		{"host:abc", "", 0, "not a number"},
		{":61620", "", 0, "no host"},
		{"0.0.0.0", "", 0, "not an address"},
		{"[::]:61620", "", 0, "not an address"},
		{"a b", "", 0, "spaces"},
		{"stomp://h:1", "", 0, "expected one line HOST"},
		{"h/x", "", 0, "expected one line HOST"}, {"h_!", "", 0, "not a host name"},
		{"[::1", "", 0, "expected one line HOST"},
		{"a..b", "", 0, "not a host name"},
		{"1:2:3:zz", "", 0, "expected one line HOST"},
	}
	for _, tc := range cases {
		host, port, err := ParsePrimaryLocation(tc.in)
		if tc.err == "" {
			if err != nil || host != tc.host || port != tc.port {
				t.Errorf("%q: got %q %d %v, want %q %d", tc.in, host, port, err, tc.host, tc.port)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%q: got %q %d err %v, want error with %q", tc.in, host, port, err, tc.err)
		}
		if err != nil && !strings.Contains(err.Error(), "HOST:PORT") {
			t.Errorf("%q: error should give the expected form: %v", tc.in, err)
		}
	}
}

func TestReadPrimaryLocation(t *testing.T) {
	cases := []struct {
		name    string
		content *string
		want    string
		err     string
	}{
		{"absent", nil, "", ""},
		{"host", ptr("10.0.0.1\n"), "10.0.0.1:61620", ""},
		{"host port no newline", ptr("opsc-a:7000"), "opsc-a:7000", ""},
		{"crlf and spaces", ptr("  opsc-a:7000 \r\n"), "opsc-a:7000", ""},
		{"ipv6", ptr("[::1]:61620\n"), "[::1]:61620", ""},
		{"ipv6 no port", ptr("[fe80::1]\n"), "[fe80::1]:61620", ""},
		{"empty", ptr(""), "", "empty file"},
		{"blank", ptr("\n\n"), "", "empty file"},
		{"two lines", ptr("a:1\nb:2\n"), "", "several lines"},
		{"garbage", ptr("\x00\x01garbage"), "", "expected one line HOST"},
		{"bad port", ptr("a:99999\n"), "", "0-65535"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, PrimaryLocationFile)
			if tc.content != nil {
				if err := os.WriteFile(path, []byte(*tc.content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			hp, present, err := ReadPrimaryLocation(dir)
			if present != (tc.content != nil) {
				t.Fatalf("present = %v", present)
			}
			if tc.err == "" {
				if err != nil || hp != tc.want {
					t.Fatalf("got %q %v, want %q", hp, err, tc.want)
				}
				return
			}
			checkErr(t, err, path, tc.err, "HOST or HOST:PORT")
			if hp != "" {
				t.Fatalf("hostport %q on error", hp)
			}
		})
	}
}

func ptr(s string) *string { return &s }

func TestWritePrimaryLocation(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new-data")
	if err := WritePrimaryLocation(dir, "opsc-a"); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(dir, PrimaryLocationFile))
	if string(b) != "opsc-a:61620\n" {
		t.Fatalf("%q", b)
	}
	if err := WritePrimaryLocation(dir, "::1"); err != nil {
		t.Fatal(err)
	}
	hp, present, err := ReadPrimaryLocation(dir)
	if err != nil || !present || hp != "[::1]:61620" {
		t.Fatalf("%q %v %v", hp, present, err)
	}
	err = WritePrimaryLocation(dir, "bad host:1")
	if err == nil || !errors.Is(err, ErrInvalid) {
		t.Fatalf("want invalid, got %v", err)
	}
	hp, _, _ = ReadPrimaryLocation(dir)
	if hp != "[::1]:61620" {
		t.Fatalf("a refused write changed the file: %q", hp)
	}
	left, _ := filepath.Glob(filepath.Join(dir, ".*tmp-*"))
	if len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}
