package admintoken

import (
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestCreatedOnceMode0600AndStableAcrossRestarts(t *testing.T) {
	dir := t.TempDir()
	tok, created, err := LoadOrCreate(dir)
	if err != nil || !created {
		t.Fatalf("first start: %q %v %v", tok, created, err)
	}
	if b, err := hex.DecodeString(tok); err != nil || len(b) != Size {
		t.Fatalf("token %q is not %d random bytes in hex", tok, Size)
	}
	fi, err := os.Stat(Path(dir))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %04o, want 0600", fi.Mode().Perm())
	}
	for i := 0; i < 3; i++ { // "restarts"
		again, created, err := LoadOrCreate(dir)
		if err != nil || created || again != tok {
			t.Fatalf("restart %d: %q created=%v %v; want the same token", i, again, created, err)
		}
	}
	if got, err := Read(Path(dir)); err != nil || got != tok {
		t.Fatalf("Read: %q %v", got, err)
	}
	// No temporary files are left behind.
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("data dir holds %v", ents)
	}
	// Two different data dirs get different tokens.
	other, _, _ := LoadOrCreate(t.TempDir())
	if other == tok {
		t.Fatal("two data dirs got the same token")
	}
}

func TestConcurrentFirstStartsAgree(t *testing.T) {
	dir := t.TempDir()
	var wg sync.WaitGroup
	toks := make([]string, 8)
	errs := make([]error, 8)
	for i := range toks {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			toks[i], _, errs[i] = LoadOrCreate(dir)
		}(i)
	}
	wg.Wait()
	for i := range toks {
		if errs[i] != nil || toks[i] != toks[0] {
			t.Fatalf("%d: %q %v (first %q)", i, toks[i], errs[i], toks[0])
		}
	}
}

func TestGarbageIsAnErrorNamingTheFileAndIsNotReplaced(t *testing.T) {
	for name, content := range map[string]string{
		"empty":    "",
		"short":    "abc\n",
		"not hex":  strings.Repeat("zz", Size) + "\n",
		"two keys": strings.Repeat("ab", Size) + "\n" + strings.Repeat("cd", Size) + "\n",
		"huge":     strings.Repeat("a", 10000),
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			p := Path(dir)
			if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, _, err := LoadOrCreate(dir)
			if err == nil || !strings.Contains(err.Error(), p) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("err %v: want one line naming %s", err, p)
			}
			if b, _ := os.ReadFile(p); string(b) != content {
				t.Fatal("the garbage file was replaced")
			}
		})
	}
}

func TestLooseModeIsAnError(t *testing.T) {
	dir := t.TempDir()
	p := Path(dir)
	os.WriteFile(p, []byte(strings.Repeat("ab", Size)+"\n"), 0o644)
	os.Chmod(p, 0o644)
	if _, _, err := LoadOrCreate(dir); err == nil || !strings.Contains(err.Error(), "chmod 600 "+p) {
		t.Fatalf("err %v", err)
	}
}

func TestReadMissingNamesTheFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), FileName)
	_, err := Read(p)
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), p) {
		t.Fatalf("%v", err)
	}
}

func TestEqual(t *testing.T) {
	tok := strings.Repeat("ab", Size)
	if !Equal(tok, tok) || Equal("", tok) || Equal(tok[:10], tok) || Equal("", "") {
		t.Fatal("Equal")
	}
}
