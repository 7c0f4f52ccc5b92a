package jsonlines

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"
)

type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *lockedBuf) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

func TestEveryLineArrivesWholeFromManyWriters(t *testing.T) {
	var out lockedBuf
	w := New(&out, 5*time.Millisecond)
	var wg sync.WaitGroup
	for g := 0; g < 20; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 500; i++ {
				w.Write(map[string]int{"g": g, "i": i})
			}
		}(g)
	}
	wg.Wait()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 20*500 {
		t.Fatalf("%d lines, want %d", len(lines), 20*500)
	}
	for _, l := range lines {
		if !strings.HasPrefix(l, `{"g":`) || !strings.HasSuffix(l, "}") {
			t.Fatalf("torn line %q", l)
		}
	}
}

func TestLinesArriveWithinTheFlushInterval(t *testing.T) {
	var out lockedBuf
	w := New(&out, 5*time.Millisecond)
	defer w.Close()
	w.Write("x")
	deadline := time.Now().Add(5 * time.Second)
	for out.String() != "\"x\"\n" {
		if time.Now().After(deadline) {
			t.Fatalf("the line was not flushed: %q", out.String())
		}
		time.Sleep(time.Millisecond)
	}
}

// A line encoded by the caller lands as is; a value that cannot be encoded
// is Close's error, and the lines around it are kept.
func TestWriteLineAndAnEncodingError(t *testing.T) {
	var out lockedBuf
	w := New(&out, time.Hour)
	w.WriteLine([]byte(`{"pre":1}`))
	w.Write(make(chan int)) // json: unsupported type
	w.Write("after")
	if err := w.Close(); err == nil || !strings.Contains(err.Error(), "unsupported type") {
		t.Fatalf("Close: %v", err)
	}
	if got := out.String(); got != "{\"pre\":1}\n\"after\"\n" {
		t.Fatalf("written %q", got)
	}
}
