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

// Append's lines land whole and in order, whether they fit the buffer's
// free space or not.
func TestAppendWritesLinesInPlace(t *testing.T) {
	var out lockedBuf
	w := New(&out, time.Hour)
	big := strings.Repeat("y", 3<<20) // more than the 1 MiB buffer
	w.Append(func(b []byte) []byte { return append(b, `{"a":1}`...) })
	w.Append(func(b []byte) []byte { return append(append(append(b, '"'), big...), '"') })
	w.Append(func(b []byte) []byte { return append(b, `{"b":2}`...) })
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if got, want := out.String(), "{\"a\":1}\n\""+big+"\"\n{\"b\":2}\n"; got != want {
		t.Fatalf("written %d bytes, want %d (%.40q)", len(got), len(want), got)
	}
	x := New(&lockedBuf{}, time.Hour)
	defer x.Close()
	add := func(b []byte) []byte { return append(b, `{"c":3}`...) }
	if n := testing.AllocsPerRun(1000, func() { x.Append(add) }); n != 0 {
		t.Fatalf("%.1f allocations per line that fits the buffer, want none", n)
	}
}
