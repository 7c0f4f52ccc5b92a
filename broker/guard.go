package broker

import (
	"bytes"
	"fmt"
	"strconv"
)

// frameGuard watches the bytes a client sends, frame by frame, and fails as
// soon as one frame (command line, headers, body and NUL) is known to exceed
// max bytes. It runs on each chunk before go-stomp's frame.Reader sees it, so
// an over-large content-length is refused before go-stomp would allocate it,
// and a frame without content-length is cut off once it has grown past max.
// Heart-beat EOLs between frames are not counted.
type frameGuard struct {
	max int

	state    int
	size     int    // bytes of the current frame so far
	line     []byte // start of the current header line (bounded)
	lineLen  int
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

const maxGuardLine = 64 // enough to recognise content-length:NNNNNNNNNN

// scan inspects p and reports how many frames it completed; the error wraps
// ErrFrameTooLarge when a frame exceeds max. With stop set it stops right
// after the first frame it completes; n is how many bytes of p it inspected.
func (g *frameGuard) scan(p []byte, stop bool) (n, frames int, err error) {
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
		// gCommand or gHeaders: byte by byte through the lines.
		b := p[i]
		i++
		g.size++
		if g.size > g.max {
			return i, frames, g.tooLarge()
		}
		if b != '\n' {
			g.lineLen++
			if len(g.line) < maxGuardLine {
				g.line = append(g.line, b)
			}
			continue
		}
		line := bytes.TrimSuffix(g.line, []byte{'\r'})
		empty := g.lineLen == 0 || (g.lineLen == 1 && len(line) == 0)
		g.line, g.lineLen = g.line[:0], 0
		if g.state == gCommand {
			if empty { // heart-beat
				g.size = 0
				continue
			}
			g.state = gHeaders
			continue
		}
		if !empty {
			if !g.clSeen && bytes.HasPrefix(line, []byte("content-length:")) {
				// go-stomp uses the first content-length header.
				g.clSeen = true
				v, perr := strconv.ParseUint(string(line[len("content-length:"):]), 10, 32)
				if perr != nil {
					g.clValue = -1 // go-stomp will reject the frame itself
				} else {
					g.clValue = int(v)
					if g.size+g.clValue+1 > g.max {
						return i, frames, g.tooLarge()
					}
				}
			}
			continue
		}
		// End of headers.
		if g.clSeen && g.clValue >= 0 {
			g.size += g.clValue + 1
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
	g.lineLen = 0
	g.clSeen = false
	g.clValue = 0
	g.bodyLeft = 0
}
