package fsutil

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

func TestDirResolve(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "conf")
	os.MkdirAll(filepath.Join(dir, "a", "b"), 0o755)
	os.WriteFile(filepath.Join(dir, "a", "b", "real"), []byte("x"), 0o644)
	os.WriteFile(filepath.Join(root, "outside"), []byte("x"), 0o644)
	links := map[string]string{
		"direct":    "a/b/real",
		"chain":     "direct",
		"a/up":      "../a/b/real",    // a link in a subdirectory, relative to it
		"viadir":    "a/bl/../b/real", // ".." after a link is the parent of its target
		"a/bl":      "b",              //
		"escape":    "../outside",     //
		"abs":       filepath.Join(root, "outside"),
		"deep":      "a/deepout",     // the second link climbs out
		"a/deepout": "../../outside", //
		"loop1":     "loop2",
		"loop2":     "loop1",
	}
	for name, to := range links {
		if err := os.Symlink(to, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	d, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, name := range []string{"direct", "chain", "a/up", "viadir"} {
		sub, base, err := d.Resolve(name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if sub.Path() != filepath.Join(dir, "a", "b") || base != "real" {
			t.Fatalf("%s: %s %s", name, sub.Path(), base)
		}
		sub.Close()
	}
	for _, name := range []string{"escape", "abs", "deep", "..", "../outside"} {
		if _, _, err := d.Resolve(name); !errors.Is(err, ErrEscapes) {
			t.Fatalf("%s: %v, want ErrEscapes", name, err)
		}
	}
	if _, _, err := d.Resolve("loop1"); err == nil {
		t.Fatal("a link loop must be an error")
	}
	if _, _, err := d.Resolve("missing"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing: %v", err)
	}
	// Resolve does not open: a directory is refused by the open.
	sub, base, err := d.Resolve("a")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if _, _, err := sub.ReadRegular(base, 10); !errors.Is(err, ErrNotRegular) {
		t.Fatalf("a directory: %v", err)
	}
}

func TestDirReadLockStage(t *testing.T) {
	dir := t.TempDir()
	d, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	os.WriteFile(filepath.Join(dir, "f"), []byte("12345"), 0o640)
	if _, _, err := d.ReadRegular("f", 4); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("over the limit: %v", err)
	}
	b, st, err := d.ReadRegular("f", 5)
	if err != nil || string(b) != "12345" {
		t.Fatalf("%q %v", b, err)
	}
	os.Symlink("f", filepath.Join(dir, "l"))
	if _, _, err := d.ReadRegular("l", 5); !errors.Is(err, ErrNotRegular) {
		t.Fatalf("a link is not opened: %v", err)
	}
	// Lock files: created, reopened, never through a link.
	for i := 0; i < 2; i++ {
		fd, err := d.OpenLock(".f.lock")
		if err != nil {
			t.Fatal(err)
		}
		closeFd(fd)
	}
	os.Symlink(filepath.Join(dir, "target"), filepath.Join(dir, ".l.lock"))
	if _, err := d.OpenLock(".l.lock"); !errors.Is(err, ErrNotRegular) {
		t.Fatalf("lock link: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "target")); err == nil {
		t.Fatal("created the lock link's target")
	}
	// Stage keeps the mode; Commit renames through the handle; Abort after
	// Commit does nothing.
	s, err := d.Stage("f", []byte("new"), st, Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(); err != nil {
		t.Fatal(err)
	}
	s.Abort()
	if b, _ := os.ReadFile(filepath.Join(dir, "f")); string(b) != "new" {
		t.Fatalf("%q", b)
	}
	fi, _ := os.Stat(filepath.Join(dir, "f"))
	if fi.Mode().Perm() != 0o640 {
		t.Fatalf("mode %v", fi.Mode())
	}
	// Info, taken from the descriptor before the rename, is the committed
	// file's identity.
	if s.Info == nil || !os.SameFile(s.Info, fi) || !s.Info.ModTime().Equal(fi.ModTime()) || s.Info.Size() != fi.Size() {
		t.Fatalf("Info %+v is not the committed file %+v", s.Info, fi)
	}
	if err := s.Commit(); err == nil {
		t.Fatal("a second Commit must fail")
	}
	if err := d.Sync(); err != nil {
		t.Fatal(err)
	}
	f, err := d.OpenFS()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

func TestOpenDirTrusted(t *testing.T) {
	root := t.TempDir()
	real := filepath.Join(root, "real")
	os.MkdirAll(real, 0o755)
	safe := filepath.Join(root, "safe") // only we may write it: its links are followed
	os.MkdirAll(safe, 0o755)
	os.Symlink("../real", filepath.Join(safe, "conf"))
	open := filepath.Join(root, "open") // world-writable: its links are not
	os.MkdirAll(open, 0o755)
	os.Chmod(open, 0o777)
	os.Symlink("../real", filepath.Join(open, "conf"))
	d, err := OpenDirTrusted(filepath.Join(safe, "conf"))
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	if _, err := OpenDirTrusted(filepath.Join(open, "conf")); !errors.Is(err, ErrUntrustedLink) {
		t.Fatalf("link in a world-writable directory: %v", err)
	}
	// Plain directories may be owned and writable by anyone.
	os.MkdirAll(filepath.Join(open, "plain"), 0o777)
	if d, err := OpenDirTrusted(filepath.Join(open, "plain", "..", "plain")); err != nil {
		t.Fatal(err)
	} else {
		d.Close()
	}
	if _, err := OpenDirTrusted(filepath.Join(root, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing: %v", err)
	}
}

func closeFd(fd int) { os.NewFile(uintptr(fd), "").Close() }
