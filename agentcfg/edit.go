package agentcfg

import (
	"bytes"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// Update is what a writer sets. Edit and the rewrite functions always set all
// four keys.
type Update struct {
	StompInterface string
	StompPort      int
	FailoverID     string
	Epoch          uint64
	// FailoverSig, when set, is written as failover_sig (the server's
	// signature over the four values above).
	FailoverSig string
}

// Validate checks the update itself (errors wrap ErrBadUpdate).
func (u Update) Validate() error {
	if !validHost(u.StompInterface) {
		return fmt.Errorf("%w: %s: expected %s, got %q", ErrBadUpdate, KeyStompInterface, wantHost, u.StompInterface)
	}
	if u.StompPort < 1 || u.StompPort > 65535 {
		return fmt.Errorf("%w: %s: expected %s, got %d", ErrBadUpdate, KeyStompPort, wantPort, u.StompPort)
	}
	if _, ok := parseUUID(u.FailoverID); !ok {
		return fmt.Errorf("%w: %s: expected %s, got %q", ErrBadUpdate, KeyFailoverID, wantUUID, u.FailoverID)
	}
	if len(u.FailoverSig) > maxSigLen || strings.IndexFunc(u.FailoverSig, func(r rune) bool { return !isHexDigit(r) }) >= 0 {
		return fmt.Errorf("%w: %s: expected hex digits", ErrBadUpdate, KeyFailoverSig)
	}
	return nil
}

// Edit returns data with stomp_interface, stomp_port, failover_id and
// failover_epoch set to u's values. It is a text edit guided by the positions
// the YAML parser reports, never a re-marshal: only the bytes of a value that
// actually changes are replaced (keeping its quoting style), keys that are
// absent are appended at the end of the file (with the file's line ending,
// CRLF or LF, and the mapping's indentation), and every other byte — other
// keys, their order, comments, blank lines — is kept. When nothing changes the
// result is data itself.
//
// Before returning, the result is parsed again and must yield exactly u's
// values, the same use_ssl and unchanged values for every other key;
// otherwise Edit returns an error wrapping ErrSelfCheck. Empty and
// comment-only files get the keys appended. A non-mapping document, invalid
// UTF-8, a syntax error, more than one document or a duplicate owned key is
// an error. In a flow-style top-level mapping (`{a: 1}`) values can be
// replaced but keys cannot be added (ErrUnsupported).
func Edit(data []byte, u Update) ([]byte, error) {
	if err := u.Validate(); err != nil {
		return nil, err
	}
	d, err := load(data)
	if err != nil {
		return nil, err
	}
	out, _, err := d.edit(u)
	return out, err
}

type splice struct {
	start, end int
	text       string
}

// setKey is one owned key an edit sets.
type setKey struct {
	key      string
	val      string
	isString bool
	equal    func(string) bool
}

func (d *doc) edit(u Update) ([]byte, Address, error) {
	if err := u.Validate(); err != nil {
		return nil, Address{}, err
	}
	id, _ := parseUUID(u.FailoverID)
	want := []setKey{
		{KeyStompInterface, u.StompInterface, true, func(s string) bool { return s == u.StompInterface }},
		{KeyStompPort, strconv.Itoa(u.StompPort), false, func(s string) bool { p, ok := parsePort(s); return ok && p == u.StompPort }},
		{KeyFailoverID, id, true, func(s string) bool { v, ok := parseUUID(s); return ok && v == id }},
		{KeyFailoverEpoch, strconv.FormatUint(u.Epoch, 10), false, func(s string) bool { e, ok := parseEpoch(s); return ok && e == u.Epoch }},
	}
	if u.FailoverSig != "" {
		want = append(want, setKey{KeyFailoverSig, u.FailoverSig, true, func(s string) bool { return s == u.FailoverSig }})
	}
	out, changed, err := d.set(want)
	if err != nil {
		return nil, Address{}, err
	}
	if !changed {
		// Already identical. Still insist the file is valid as a whole.
		a, err := d.address()
		if err != nil {
			return nil, Address{}, err
		}
		return d.data, a, nil
	}
	a, err := d.check(out, u)
	if err != nil {
		return nil, Address{}, err
	}
	return out, a, nil
}

// set computes the text with every key of want set: a value that differs is
// replaced in place, a missing key appended. changed is false (and out is
// d.data) when every value is already equal. The caller checks the result.
func (d *doc) set(want []setKey) (out []byte, changed bool, err error) {
	var idx *lineIndex
	var splices []splice
	var missing []string
	for _, w := range want {
		p, ok := d.known[w.key]
		if !ok {
			missing = append(missing, w.key+": "+render(w.val, 0, w.isString))
			continue
		}
		if idx == nil {
			idx = newLineIndex(d.data)
		}
		s, err := d.replace(idx, p, w.key, w.val, w.isString, w.equal)
		if err != nil {
			return nil, false, err
		}
		if s != nil {
			splices = append(splices, *s)
		}
	}
	if len(splices) == 0 && len(missing) == 0 {
		return d.data, false, nil
	}
	out = applySplices(d.data, splices)
	if len(missing) > 0 {
		if d.root != nil && d.root.Style&yaml.FlowStyle != 0 {
			return nil, false, fmt.Errorf("%w: cannot add %s to a flow-style top-level mapping; add it by hand or use block style",
				ErrUnsupported, strings.SplitN(missing[0], ":", 2)[0])
		}
		eol := "\n"
		if bytes.Contains(d.data, []byte("\r\n")) {
			eol = "\r\n"
		}
		indent := ""
		if d.root != nil && len(d.root.Content) > 0 {
			indent = strings.Repeat(" ", d.root.Content[0].Column-1)
		}
		// Append at the end, or just before a document end marker ("...").
		at, tail := len(out), []byte(nil)
		if e, ok := docEnd(out); ok {
			at = e
			tail = append(tail, out[e:]...)
		}
		var b strings.Builder
		if at > 0 && !endsWithBreak(out[:at]) {
			b.WriteString(eol)
		}
		for _, m := range missing {
			b.WriteString(indent)
			b.WriteString(m)
			b.WriteString(eol)
		}
		out = append(append(out[:at:at], b.String()...), tail...)
	}
	return out, true, nil
}

// replace computes the splice that sets an existing owned key, or nil when
// its value already equals val.
func (d *doc) replace(idx *lineIndex, p pair, key, val string, isString bool, equal func(string) bool) (*splice, error) {
	v := p.val
	switch v.Kind {
	case yaml.AliasNode:
		if v.Alias != nil && v.Alias.Kind == yaml.ScalarNode && equal(v.Alias.Value) {
			return nil, nil
		}
		start, ok := idx.offset(v.Line, v.Column)
		if !ok || start >= len(d.data) || d.data[start] != '*' {
			return nil, fmt.Errorf("%w: %s: cannot locate the alias at line %d", ErrUnsupported, key, v.Line)
		}
		end := start + 1 + len(v.Value)
		if end > len(d.data) || string(d.data[start+1:end]) != v.Value {
			return nil, fmt.Errorf("%w: %s: cannot locate the alias at line %d", ErrUnsupported, key, v.Line)
		}
		return &splice{start, end, render(val, 0, isString)}, nil
	case yaml.ScalarNode:
	default:
		return nil, fmt.Errorf("%w: %s: a %s value at line %d cannot be rewritten", ErrUnsupported, key, kindName(v), v.Line)
	}
	if v.Tag != "!!null" && equal(v.Value) {
		return nil, nil
	}
	if v.Anchor != "" || v.Style&(yaml.TaggedStyle|yaml.LiteralStyle|yaml.FoldedStyle) != 0 {
		return nil, fmt.Errorf("%w: %s: anchored, tagged or block-style value at line %d; rewrite it as a plain value", ErrUnsupported, key, v.Line)
	}
	start, ok := idx.offset(v.Line, v.Column)
	if !ok {
		return nil, fmt.Errorf("%w: %s: cannot locate the value at line %d", ErrUnsupported, key, v.Line)
	}
	if start < len(d.data) && (d.data[start] == '&' || d.data[start] == '!') && v.Value != "" {
		return nil, fmt.Errorf("%w: %s: anchored or tagged value at line %d; rewrite it as a plain value", ErrUnsupported, key, v.Line)
	}
	flow := d.root.Style&yaml.FlowStyle != 0
	switch {
	case v.Style&yaml.DoubleQuotedStyle != 0:
		end, ok := quotedEnd(d.data, start, '"')
		if !ok {
			return nil, fmt.Errorf("%w: %s: cannot locate the quoted value at line %d", ErrUnsupported, key, v.Line)
		}
		return &splice{start, end, render(val, yaml.DoubleQuotedStyle, isString)}, nil
	case v.Style&yaml.SingleQuotedStyle != 0:
		end, ok := quotedEnd(d.data, start, '\'')
		if !ok {
			return nil, fmt.Errorf("%w: %s: cannot locate the quoted value at line %d", ErrUnsupported, key, v.Line)
		}
		return &splice{start, end, render(val, yaml.SingleQuotedStyle, isString)}, nil
	case v.Tag == "!!null" && v.Value == "":
		// `key:` with no value: insert after the colon.
		text := render(val, 0, isString)
		if start > 0 && start <= len(d.data) && d.data[start-1] != ' ' && d.data[start-1] != '\t' {
			text = " " + text
		}
		if start < len(d.data) && !isSpaceOrBreak(d.data[start]) && !(flow && (d.data[start] == ',' || d.data[start] == '}')) {
			text += " "
		}
		return &splice{start, start, text}, nil
	default:
		end := plainEnd(d.data, start, flow)
		if string(d.data[start:end]) != v.Value {
			return nil, fmt.Errorf("%w: %s: multi-line value at line %d; rewrite it on one line", ErrUnsupported, key, v.Line)
		}
		return &splice{start, end, render(val, 0, isString)}, nil
	}
}

// check re-parses out and verifies the result of an edit.
func (d *doc) check(out []byte, u Update) (Address, error) {
	d2, err := d.reparse(out)
	if err != nil {
		return Address{}, fmt.Errorf("%w: %v", ErrSelfCheck, err)
	}
	got, err := d2.address()
	if err != nil {
		return Address{}, fmt.Errorf("%w: %v", ErrSelfCheck, err)
	}
	id, _ := parseUUID(u.FailoverID)
	if got.StompInterface != u.StompInterface || got.StompPort != u.StompPort || got.FailoverID != id ||
		!got.HasEpoch || got.FailoverEpoch != u.Epoch || (u.FailoverSig != "" && got.FailoverSig != u.FailoverSig) {
		return Address{}, fmt.Errorf("%w: re-parsed %+v", ErrSelfCheck, got)
	}
	// use_ssl is not edited: it must read the same as before.
	oldSSL, _, _, _ := d.scalar(KeyUseSSL)
	newSSL, _, _, _ := d2.scalar(KeyUseSSL)
	if oldSSL != newSSL {
		return Address{}, fmt.Errorf("%w: use_ssl changed from %q to %q", ErrSelfCheck, oldSSL, newSSL)
	}
	// Nor is failover_servers.
	oldSrv, _, _, _ := d.scalar(KeyFailoverServers)
	newSrv, _, _, _ := d2.scalar(KeyFailoverServers)
	if oldSrv != newSrv {
		return Address{}, fmt.Errorf("%w: failover_servers changed from %q to %q", ErrSelfCheck, oldSrv, newSrv)
	}
	if a, b := otherKeys(d), otherKeys(d2); a != b {
		return Address{}, fmt.Errorf("%w: other keys changed", ErrSelfCheck)
	}
	return got, nil
}

// otherKeys renders the keys agentcfg does not own, with their values, in a
// canonical form that ignores layout and comments (used by the self-check and
// the tests).
func otherKeys(d *doc) string {
	var b strings.Builder
	for _, p := range d.pairs {
		if p.key.Kind == yaml.ScalarNode && isKnown(p.key.Value) {
			continue
		}
		sig(&b, p.key)
		b.WriteString(" => ")
		sig(&b, p.val)
		b.WriteByte('\n')
	}
	return b.String()
}

func sig(b *strings.Builder, n *yaml.Node) {
	fmt.Fprintf(b, "(%d %s %q &%s", n.Kind, n.Tag, n.Value, n.Anchor)
	if n.Kind != yaml.AliasNode {
		for _, c := range n.Content {
			b.WriteByte(' ')
			sig(b, c)
		}
	}
	b.WriteByte(')')
}

func applySplices(data []byte, s []splice) []byte {
	sort.Slice(s, func(i, j int) bool { return s[i].start < s[j].start })
	out := make([]byte, 0, len(data)+128)
	last := 0
	for _, sp := range s {
		out = append(out, data[last:sp.start]...)
		out = append(out, sp.text...)
		last = sp.end
	}
	return append(out, data[last:]...)
}

// render formats a new value. Quoted styles are kept; a plain string that
// YAML would read as something else (a number, a bool, null) is quoted.
// Values are validated host names, IPs, UUIDs and integers, which never need
// escaping.
func render(val string, style yaml.Style, isString bool) string {
	switch {
	case style&yaml.DoubleQuotedStyle != 0:
		return `"` + val + `"`
	case style&yaml.SingleQuotedStyle != 0:
		return `'` + val + `'`
	case isString && !plainString(val):
		return `"` + val + `"`
	}
	return val
}

// plainCache remembers plainString answers: a batch writes the same host and
// id into every file.
var plainCache sync.Map

// plainString reports whether val written plain reads back as the same string.
func plainString(val string) bool {
	if v, ok := plainCache.Load(val); ok {
		return v.(bool)
	}
	ok := plainStringUncached(val)
	if len(val) <= 253 {
		plainCache.Store(val, ok)
	}
	return ok
}

func plainStringUncached(val string) bool {
	if val == "" || strings.ContainsAny(val, ":#,[]{}&*!|>'\"%@`") {
		return false
	}
	var n yaml.Node
	if err := yaml.Unmarshal([]byte("k: "+val), &n); err != nil || len(n.Content) != 1 || len(n.Content[0].Content) != 2 {
		return false
	}
	v := n.Content[0].Content[1]
	return v.Tag == "!!str" && v.Value == val
}

func isSpaceOrBreak(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func endsWithBreak(b []byte) bool {
	if len(b) == 0 {
		return true
	}
	if c := b[len(b)-1]; c == '\n' || c == '\r' {
		return true
	}
	r, _ := utf8.DecodeLastRune(b)
	return r == '\u0085' || r == '\u2028' || r == '\u2029'
}

// breakLen returns the length of the line break at data[i], or 0.
func breakLen(data []byte, i int) int {
	switch c := data[i]; {
	case c == '\n':
		return 1
	case c == '\r':
		if i+1 < len(data) && data[i+1] == '\n' {
			return 2
		}
		return 1
	case c == 0xC2 && i+1 < len(data) && data[i+1] == 0x85:
		return 2
	case c == 0xE2 && i+2 < len(data) && data[i+1] == 0x80 && (data[i+2] == 0xA8 || data[i+2] == 0xA9):
		return 3
	}
	return 0
}

// plainEnd returns the end of a plain scalar that starts at s and fits on
// its line: up to a comment (" #"), a flow indicator in flow context, or the
// line break, without trailing blanks.
func plainEnd(data []byte, s int, flow bool) int {
	i := s
	for i < len(data) && breakLen(data, i) == 0 {
		c := data[i]
		if (c == ' ' || c == '\t') && i+1 < len(data) && data[i+1] == '#' {
			break
		}
		if flow && (c == ',' || c == '}' || c == ']' || c == '{' || c == '[') {
			break
		}
		i++
	}
	for i > s && (data[i-1] == ' ' || data[i-1] == '\t') {
		i--
	}
	return i
}

// quotedEnd returns the offset just past the closing quote of a quoted scalar
// starting at s.
func quotedEnd(data []byte, s int, q byte) (int, bool) {
	if s >= len(data) || data[s] != q {
		return 0, false
	}
	for i := s + 1; i < len(data); i++ {
		switch data[i] {
		case '\\':
			if q == '"' {
				i++
			}
		case q:
			if q == '\'' && i+1 < len(data) && data[i+1] == '\'' {
				i++
				continue
			}
			return i + 1, true
		}
	}
	return 0, false
}

// lineIndex maps the parser's 1-based line/column (columns count characters)
// to byte offsets, with the same line breaks as yaml.v3: LF, CRLF, CR, NEL,
// LS and PS. A leading byte order mark is not counted.
type lineIndex struct {
	data   []byte
	starts []int
}

func newLineIndex(data []byte) *lineIndex {
	x := &lineIndex{data: data, starts: make([]int, 1, 64)}
	if bytes.HasPrefix(data, bom) {
		x.starts[0] = len(bom)
	}
	for i := x.starts[0]; i < len(data); {
		if n := breakLen(data, i); n > 0 {
			i += n
			x.starts = append(x.starts, i)
			continue
		}
		i++
	}
	return x
}

func (x *lineIndex) offset(line, col int) (int, bool) {
	if line < 1 || line > len(x.starts) || col < 1 {
		return 0, false
	}
	p := x.starts[line-1]
	for c := 1; c < col; c++ {
		if p >= len(x.data) {
			return 0, false
		}
		_, w := utf8.DecodeRune(x.data[p:])
		p += w
	}
	return p, true
}

// docEnd returns the offset of a document end marker line ("..." at the
// start of a line), if any.
func docEnd(data []byte) (int, bool) {
	x := newLineIndex(data)
	for _, s := range x.starts {
		if !bytes.HasPrefix(data[s:], []byte("...")) {
			continue
		}
		if e := s + 3; e == len(data) || data[e] == ' ' || data[e] == '\t' || breakLen(data, e) > 0 {
			return s, true
		}
	}
	return 0, false
}
