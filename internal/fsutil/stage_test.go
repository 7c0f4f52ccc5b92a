package fsutil

import (
	"os"
	"path/filepath"
	"testing"
)

func TestStageCommitAbort(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "f.yaml")
	if err := os.WriteFile(target, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.yaml")
	if err := os.Symlink("f.yaml", link); err != nil {
		t.Fatal(err)
	}

	s, err := Stage(link, []byte("new"), Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	if s.Target != target || !IsTemp(s.Temp) || filepath.Dir(s.Temp) != dir {
		t.Fatalf("%+v", s)
	}
	if b, _ := os.ReadFile(target); string(b) != "old" {
		t.Fatal("target changed before Commit")
	}
	if err := s.Commit(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(link); string(b) != "new" {
		t.Fatalf("after Commit: %q", b)
	}
	if fi, _ := os.Lstat(link); fi.Mode()&os.ModeSymlink == 0 {
		t.Fatal("link replaced")
	}
	if fi, _ := os.Stat(target); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", fi.Mode())
	}

	s, err = Stage(target, []byte("newer"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	s.Abort()
	if _, err := os.Stat(s.Temp); !os.IsNotExist(err) {
		t.Fatal("Abort left the temporary file")
	}
	if b, _ := os.ReadFile(target); string(b) != "new" {
		t.Fatal("Abort changed the target")
	}

	// A new file gets opt.Perm.
	s, err = Stage(filepath.Join(dir, "fresh"), []byte("x"), Options{Perm: 0o640})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "fresh")); fi.Mode().Perm() != 0o640 {
		t.Fatalf("mode %v", fi.Mode())
	}

	fs, err := OpenFS(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer fs.Close()
	if err := fs.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := SyncFS(dir); err != nil {
		t.Fatal(err)
	}
}
