package broker

import (
	"bytes"
	"errors"
	"io"
	"runtime/metrics"
	"strings"
	"testing"

	"github.com/go-stomp/stomp/v3/frame"
)

// guardScanAll runs data through g in chunks of size chunk (scan with stop
// set, as the pre-CONNECT gate does) and returns the offsets just past each
// frame the guard completed, how far it accepted the stream (all of data, or
// up to the start of the chunk it refused) and its error.
func guardScanAll(g *frameGuard, data []byte, chunk int) (ends []int, accepted int, err error) {
	pos := 0
	for pos < len(data) {
		c := data[pos:min(pos+chunk, len(data))]
		start := pos
		for len(c) > 0 {
			n, fr, serr := g.scan(c, true)
			if serr != nil {
				// The connection wrapper withholds the whole Read that
				// failed: go-stomp saw nothing of it.
				return ends, start, serr
			}
			pos += n
			c = c[n:]
			if fr > 0 {
				ends = append(ends, pos)
			}
		}
	}
	return ends, len(data), nil
}

var heapAllocs = []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}

// allocated is the process's cumulative heap allocation in bytes (a large
// allocation is counted at once).
func allocated() uint64 {
	metrics.Read(heapAllocs)
	return heapAllocs[0].Value.Uint64()
}

// stompRead parses seg with go-stomp's frame.Reader as the server does:
// heart-beats skipped, then one frame or an error. It returns the frame, the
// whether any bytes were left after the frame, the heap bytes the parse
// allocated, and the error.
func stompRead(seg []byte) (f *frame.Frame, leftover bool, alloc uint64, err error) {
	before := allocated()
	r := frame.NewReader(bytes.NewReader(seg))
	for f == nil && err == nil {
		f, err = r.Read()
	}
	if err == nil {
		var next *frame.Frame
		var nerr error
		next, nerr = r.Read()
		leftover = next != nil || nerr != io.EOF
		if next == nil && nerr == nil {
			// a heart-beat after the frame: bytes the guard did not
			// count in this frame
			leftover = true
		}
	}
	return f, leftover, allocated() - before, err
}

// stompReadMeasured is stompRead whose allocation figure is the least of
// up to three readings when the first is above bound: the counter is the
// process's, and another goroutine of the fuzzing worker may allocate
// meanwhile; a real divergence (go-stomp allocating a declared length)
// shows in every reading.
func stompReadMeasured(seg []byte, bound uint64) (f *frame.Frame, leftover bool, alloc uint64, err error) {
	f, leftover, alloc, err = stompRead(seg)
	for i := 0; i < 2 && alloc > bound; i++ {
		_, _, a, _ := stompRead(seg)
		alloc = min(alloc, a)
	}
	return f, leftover, alloc, err
}

// allocBound is what go-stomp may allocate for reading a frame of at most
// max bytes (its 4 KiB buffer, the line copies, header strings, the body)
// plus slack for the allocation counter's granularity. A divergence from
// the guard about content-length shows up as an allocation of the declared
// length, far above this.
func allocBound(max, segLen int) uint64 { return uint64(256<<10 + 8*max + 4*segLen) }

// FuzzFrameGuard checks the frame guard against go-stomp's own frame parser
// (the one that reads the bytes after it), for any byte stream, limits and
// chunking:
//
//   - every frame end the guard reports is go-stomp's frame end too: go-stomp
//     reading exactly that segment returns one frame with nothing left over,
//     or rejects it (the connection then closes and the rest never matters);
//   - on the part of the stream the guard let through after its last frame,
//     go-stomp finds no complete frame;
//   - go-stomp never allocates more than a frame of max bytes can need on
//     anything the guard let through: if go-stomp would allocate more, the
//     guard refused first;
//   - the guard's verdict does not depend on how the stream is chunked.
func FuzzFrameGuard(f *testing.F) {
	for _, s := range guardSeeds {
		f.Add([]byte(s), uint16(1024), uint8(0))
	}
	f.Fuzz(func(t *testing.T, data []byte, limit uint16, chunkSel uint8) {
		if len(data) > 64<<10 {
			return // keeps every execution (and minimization) fast
		}
		maxSize := 256 + int(limit)%4096
		g := frameGuard{max: maxSize, maxLine: 16 + int(limit>>4)%1024, maxHeaders: 1 + int(limit>>10)%64}
		chunk := int(chunkSel)
		if chunk == 0 {
			chunk = len(data) + 1
		}
		ends, accepted, gerr := guardScanAll(&g, data, chunk)
		if gerr != nil && !errors.Is(gerr, ErrFrameTooLarge) && !errors.Is(gerr, ErrMalformedFrame) {
			t.Fatalf("guard error %v is neither ErrFrameTooLarge nor ErrMalformedFrame", gerr)
		}

		// Chunking does not change the verdict.
		whole := frameGuard{max: g.max, maxLine: g.maxLine, maxHeaders: g.maxHeaders}
		_, frames, werr := whole.scan(data, false)
		if (werr == nil) != (gerr == nil) {
			t.Fatalf("chunked (%d) error %v, whole-stream error %v", chunk, gerr, werr)
		}
		if frames != len(ends) {
			t.Fatalf("chunked (%d) saw %d frames, whole stream %d", chunk, len(ends), frames)
		}

		prev := 0
		for k, end := range ends {
			seg := data[prev:end]
			fr, leftover, alloc, err := stompReadMeasured(seg, allocBound(maxSize, len(seg)))
			if alloc > allocBound(maxSize, len(seg)) {
				t.Fatalf("frame %d (%q): go-stomp allocated %d bytes, limit %d", k, seg, alloc, maxSize)
			}
			if err != nil {
				if err == io.EOF {
					t.Fatalf("frame %d (%q): the guard saw a complete frame, go-stomp wants more bytes", k, seg)
				}
				return // go-stomp rejects it: the server closes the connection
			}
			if leftover {
				t.Fatalf("frame %d (%q): go-stomp's frame %q ended before the guard's", k, seg, fr.Command)
			}
			if len(fr.Body) > maxSize {
				t.Fatalf("frame %d: body %d bytes past the guard, limit %d", k, len(fr.Body), maxSize)
			}
			prev = end
		}
		tail := data[prev:max(prev, accepted)]
		fr, _, alloc, err := stompReadMeasured(tail, allocBound(maxSize, len(tail)))
		if alloc > allocBound(maxSize, len(tail)) {
			t.Fatalf("tail %q (guard error %v): go-stomp allocated %d bytes, limit %d", tail, gerr, alloc, maxSize)
		}
		if err == nil && fr != nil {
			t.Fatalf("tail %q: go-stomp read a %s frame the guard did not see end", tail, fr.Command)
		}
	})
}

// guardSeeds are the checked-in starting points of FuzzFrameGuard (the same
// inputs are in testdata/fuzz/FuzzFrameGuard with other limits).
var guardSeeds = []string{
	"CONNECT\naccept-version:1.2\nhost:/\n\n\x00",
	"CONNECT\naccept-version:1.2\nhost:/\ncontent-length:" + strings.Repeat("0", 60) + "4294967295\n\n",
	"SEND\ndestination:/a\n\nhello\x00\n\r\nSEND\ncontent-length:3\n\na\x00b\x00",
	"SEND\ncontent-length:01\n\nx\x00",
	"SEND\ncontent-length:2\ncontent-length:99999\n\nab\x00",
	"SEND\r\ncontent-length:2\r\n\r\nab\x00",
	"SEND\ncontent-length:2\r\r\n\nab\x00",
	"SEND\ncontent-length: 2\n\nab\x00",
	"SEND\ncontent\\clength:5\n\nab\x00",
	"SUBSCRIBE\nid:1\ndestination:/topic/x\n\n\x00UNSUBSCRIBE\nid:1\n\n\x00",
}

func TestFrameGuardLimits(t *testing.T) {
	zeros := strings.Repeat("0", 60)
	cases := []struct {
		name    string
		input   string
		wantErr error // nil: accepted
		frames  int
	}{
		{"60 zeros then 4 GiB", "CONNECT\naccept-version:1.2\ncontent-length:" + zeros + "4294967295\n\n", ErrMalformedFrame, 0},
		{"leading zero", "SEND\ncontent-length:01\n\nx\x00", ErrMalformedFrame, 0},
		{"zero is fine", "SEND\ncontent-length:0\n\n\x00", nil, 1},
		{"sign", "SEND\ncontent-length:+1\n\nx\x00", ErrMalformedFrame, 0},
		{"space", "SEND\ncontent-length: 1\n\nx\x00", ErrMalformedFrame, 0},
		{"empty", "SEND\ncontent-length:\n\n\x00", ErrMalformedFrame, 0},
		{"21 digits", "SEND\ncontent-length:" + strings.Repeat("9", 21) + "\n\n", ErrFrameTooLarge, 0},
		{"value past a 64-byte prefix", "SEND\ncontent-length:" + strings.Repeat("1", 80) + "\n\n", ErrFrameTooLarge, 0},
		{"CRLF", "SEND\r\ncontent-length:1\r\n\r\nx\x00", nil, 1},
		{"header line too long", "SEND\nx:" + strings.Repeat("y", 9000) + "\n\n\x00", ErrFrameTooLarge, 0},
		{"header line at the bound", "SEND\nx:" + strings.Repeat("y", DefaultMaxHeaderLine-2) + "\n\n\x00", nil, 1},
		{"command line too long", strings.Repeat("S", 9000), ErrFrameTooLarge, 0},
		{"65 headers", "SEND\n" + strings.Repeat("a:b\n", 65) + "\n\x00", ErrFrameTooLarge, 0},
		{"64 headers", "SEND\n" + strings.Repeat("a:b\n", 64) + "\n\x00", nil, 1},
		{"headers after content-length count", "SEND\ncontent-length:30000\n" + strings.Repeat("h:"+strings.Repeat("v", 1000)+"\n", 4) + "\n", ErrFrameTooLarge, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, chunk := range []int{1, 7, 1 << 20} {
				g := frameGuard{max: 32 << 10}
				ends, _, err := guardScanAll(&g, []byte(tc.input), chunk)
				if tc.wantErr == nil && err != nil || tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
					t.Fatalf("chunk %d: err = %v, want %v", chunk, err, tc.wantErr)
				}
				if len(ends) != tc.frames {
					t.Fatalf("chunk %d: frames %d, want %d", chunk, len(ends), tc.frames)
				}
			}
		})
	}
}

// TestFuzzOracleSeesHugeAllocation: the allocation check of FuzzFrameGuard
// does catch go-stomp allocating a declared content-length (it would have
// caught the 60-zeros guard bypass).
func TestFuzzOracleSeesHugeAllocation(t *testing.T) {
	in := []byte("SEND\ncontent-length:" + strings.Repeat("0", 60) + "1048576\n\n")
	_, _, alloc, err := stompRead(in)
	if err == nil {
		t.Fatal("go-stomp read a frame from a truncated body")
	}
	if alloc < 1<<20 || alloc <= allocBound(4096, len(in)) {
		t.Fatalf("allocation seen %d bytes, want ≥ 1 MiB and above the bound %d", alloc, allocBound(4096, len(in)))
	}
	// And the guard refuses it first.
	g := frameGuard{max: 4096}
	if _, _, err := guardScanAll(&g, in, 1<<20); err == nil {
		t.Fatal("guard accepted it")
	}
}
