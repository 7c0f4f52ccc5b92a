package broker

import (
	"bytes"
	"errors"
	"fmt"
)

// ErrMalformedFrame is why the embedded broker disconnected a client whose
// frame it refused to hand to go-stomp: a content-length that is not a plain
// decimal number (empty, signed, with leading zeros or other bytes).
var ErrMalformedFrame = errors.New("broker: malformed frame")

// Frame guard defaults (ServerConfig.MaxHeaderLine, MaxHeaders).
const (
	DefaultMaxHeaderLine = 8 << 10
	DefaultMaxHeaders    = 64
)

// frameGuard watches the bytes a client sends, frame by frame, and fails as
// soon as one frame is known to break a limit. It runs on each chunk before
// go-stomp's frame.Reader sees it, so nothing it refuses is ever parsed:
//
//   - a frame (command line, headers, body and NUL) is at most max bytes:
//     an over-large content-length is refused on its header line, before
//     go-stomp would allocate it, and a frame without content-length is cut
//     off once it has grown past max;
//   - a command or header line is at most maxLine bytes (without its LF) and
//     a frame has at most maxHeaders header lines;
//   - content-length is read the way go-stomp reads it (the first header
//     whose name is exactly "content-length", the whole value, up to the
//     line's end less one CR), and must be plain decimal digits without
//     leading zeros: go-stomp's strconv.ParseUint accepts
//     "0000…04294967295", the guard does not.
//
// Heart-beat EOLs between frames are not counted. FuzzFrameGuard checks the
// guard against go-stomp's own parser.
type frameGuard struct {
	max        int
	maxLine    int
	maxHeaders int

	state    int
	size     int    // bytes of the current frame so far
	line     []byte // the current line so far (at most maxLine bytes)
	headers  int    // header lines of the current frame
	clSeen   bool
	clValue  int
	bodyLeft int
}

const (
	gCommand = iota
	gHeaders
	gBodyLen
	gBodyNul
	gTerminator
)

// scan inspects p and reports how many frames it completed; the error wraps
// ErrFrameTooLarge when a frame breaks a size limit and ErrMalformedFrame
// when its content-length is not plain decimal. With stop set it stops right
// after the first frame it completes; n is how many bytes of p it inspected.
// After an error the guard must not be used again.
func (g *frameGuard) scan(p []byte, stop bool) (n, frames int, err error) {
	if g.maxLine <= 0 {
		g.maxLine = DefaultMaxHeaderLine
	}
	if g.maxHeaders <= 0 {
		g.maxHeaders = DefaultMaxHeaders
	}
	i := 0
	for i < len(p) {
		if stop && frames > 0 {
			return i, frames, nil
		}
		switch g.state {
		case gBodyLen:
			n := min(g.bodyLeft, len(p)-i)
			g.bodyLeft -= n
			i += n
			if g.bodyLeft == 0 {
				g.state = gTerminator
			}
			continue
		case gTerminator:
			// go-stomp itself rejects anything but NUL here.
			i++
			frames++
			g.reset()
			continue
		case gBodyNul:
			j := bytes.IndexByte(p[i:], 0)
			if j < 0 {
				g.size += len(p) - i
				if g.size > g.max {
					return i, frames, g.tooLarge()
				}
				return len(p), frames, nil
			}
			g.size += j + 1
			if g.size > g.max {
				return i, frames, g.tooLarge()
			}
			i += j + 1
			frames++
			g.reset()
			continue
		}
		// gCommand or gHeaders: a line at a time.
		rest := p[i:]
		j := bytes.IndexByte(rest, '\n')
		seg := rest
		if j >= 0 {
			seg = rest[:j]
		}
		if len(g.line)+len(seg) > g.maxLine {
			return i, frames, fmt.Errorf("%w: line longer than %d bytes", ErrFrameTooLarge, g.maxLine)
		}
		g.line = append(g.line, seg...)
		g.size += len(seg)
		if j < 0 {
			if g.size > g.max {
				return i, frames, g.tooLarge()
			}
			return len(p), frames, nil
		}
		i += j + 1
		g.size++ // the LF
		line := bytes.TrimSuffix(g.line, []byte{'\r'})
		g.line = g.line[:0] // line stays valid until the next append
		if g.state == gCommand {
			if len(line) == 0 { // heart-beat
				g.size = 0
				continue
			}
			if g.size > g.max {
				return i, frames, g.tooLarge()
			}
			g.state = gHeaders
			continue
		}
		if g.size > g.max {
			return i, frames, g.tooLarge()
		}
		if len(line) > 0 {
			g.headers++
			if g.headers > g.maxHeaders {
				return i, frames, fmt.Errorf("%w: more than %d headers", ErrFrameTooLarge, g.maxHeaders)
			}
			if g.clSeen {
				continue // go-stomp uses the first content-length header
			}
			// go-stomp splits at the first colon. Its value unescaping
			// yields no digit, so a value is digits before unescaping
			// exactly when it is after.
			k := bytes.IndexByte(line, ':')
			if k <= 0 || string(line[:k]) != "content-length" {
				continue
			}
			g.clSeen = true
			v, err := g.parseLength(line[k+1:])
			if err != nil {
				return i, frames, err
			}
			g.clValue = v
			if g.size+v+1 > g.max {
				return i, frames, g.tooLarge()
			}
			continue
		}
		// End of headers.
		if g.clSeen {
			g.size += g.clValue + 1
			if g.size > g.max {
				return i, frames, g.tooLarge()
			}
			g.bodyLeft = g.clValue
			if g.bodyLeft == 0 {
				g.state = gTerminator
			} else {
				g.state = gBodyLen
			}
		} else {
			g.state = gBodyNul
		}
	}
	return i, frames, nil
}

// parseLength reads a content-length value: decimal digits, no sign, no
// leading zeros, at most max.
func (g *frameGuard) parseLength(v []byte) (int, error) {
	if len(v) == 0 {
		return 0, fmt.Errorf("%w: empty content-length", ErrMalformedFrame)
	}
	if len(v) > 1 && v[0] == '0' {
		return 0, fmt.Errorf("%w: content-length with leading zeros", ErrMalformedFrame)
	}
	n := 0
	for _, b := range v {
		if b < '0' || b > '9' {
			return 0, fmt.Errorf("%w: content-length %.20q is not a decimal number", ErrMalformedFrame, v)
		}
		if n = n*10 + int(b-'0'); n > g.max {
			return 0, fmt.Errorf("%w: content-length %.20q, limit %d", ErrFrameTooLarge, v, g.max)
		}
	}
	return n, nil
}

func (g *frameGuard) tooLarge() error {
	size := g.size
	if g.clSeen && g.clValue > 0 {
		size = max(size, g.clValue)
	}
	return fmt.Errorf("%w: %d+ bytes, limit %d", ErrFrameTooLarge, size, g.max)
}

func (g *frameGuard) reset() {
	g.state = gCommand
	g.size = 0
	g.line = g.line[:0]
	g.headers = 0
	g.clSeen = false
	g.clValue = 0
	g.bodyLeft = 0
}
