package eventlog

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

func TestConcurrentLinesStayWhole(t *testing.T) {
	p := filepath.Join(t.TempDir(), "ev.jsonl")
	l, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				l.Add(Event{Node: "n", Kind: "heartbeat", Epoch: uint64(g), Seq: uint64(i)})
			}
		}(g)
	}
	wg.Wait()
	l.Close()
	f, _ := os.Open(p)
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var e Event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil || e.Kind != "heartbeat" || e.TMS == 0 {
			t.Fatalf("line %d: %q %v", n, sc.Text(), err)
		}
		n++
	}
	if n != 1600 {
		t.Fatalf("%d lines", n)
	}
	var nilLog *Log
	nilLog.Add(Event{}) // discards, no panic
	if l, err := Open(""); l != nil || err != nil {
		t.Fatal("empty path must give a nil log")
	}
}

func TestTheEventLogIsNotWorldReadable(t *testing.T) {
	p := filepath.Join(t.TempDir(), "events.jsonl")
	l, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	fi, err := os.Stat(p)
	if err != nil || fi.Mode().Perm()&0o007 != 0 {
		t.Fatalf("mode %v %v: want no access for others", fi.Mode(), err)
	}
}
