// Package jsonlines appends JSON lines to a file for many goroutines at
// once: each line is encoded into a buffer under a lock (no system call),
// and one goroutine writes the buffer out every flush interval, so 10,000
// agents reporting at once contend on a memory copy, not on a write(2)
// each.
package jsonlines

import (
	"bufio"
	"encoding/json"
	"io"
	"sync"
	"time"
)

// Writer is a buffered JSON-lines appender. Lines reach the file within
// one flush interval, and all of them on Close.
type Writer struct {
	mu   sync.Mutex
	bw   *bufio.Writer
	err  error
	stop chan struct{}
	done chan struct{}
}

// New writes to w, flushing every interval (at least 1 ms).
func New(w io.Writer, every time.Duration) *Writer {
	bw := bufio.NewWriterSize(w, 1<<20)
	x := &Writer{bw: bw, stop: make(chan struct{}), done: make(chan struct{})}
	every = max(every, time.Millisecond)
	go func() {
		defer close(x.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-x.stop:
				x.flush()
				return
			case <-t.C:
				x.flush()
			}
		}
	}()
	return x
}

// Write appends v as one JSON line. v is encoded before the lock is
// taken: many goroutines writing at once wait only for the copy.
func (x *Writer) Write(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		x.mu.Lock()
		defer x.mu.Unlock()
		if x.err == nil {
			x.err = err
		}
		return
	}
	x.WriteLine(b)
}

// WriteLine appends b, one JSON value encoded by the caller (no newline),
// as a line.
func (x *Writer) WriteLine(b []byte) {
	x.Append(func(dst []byte) []byte { return append(dst, b...) })
}

// Append appends, as a line, the JSON value add appends to the buffer it
// is given (no newline). add runs under the writer's lock, straight into
// its buffer, so a line costs no allocation: keep it short (an encoder of
// a small value). The fleet's --events calls it for every command of
// every agent.
func (x *Writer) Append(add func([]byte) []byte) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.bw.Write(add(x.bw.AvailableBuffer()))
	if err := x.bw.WriteByte('\n'); err != nil && x.err == nil {
		x.err = err
	}
}

func (x *Writer) flush() {
	x.mu.Lock()
	defer x.mu.Unlock()
	if err := x.bw.Flush(); err != nil && x.err == nil {
		x.err = err
	}
}

// Close flushes every line and stops the flusher; it returns the first
// error met.
func (x *Writer) Close() error {
	close(x.stop)
	<-x.done
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.err
}
