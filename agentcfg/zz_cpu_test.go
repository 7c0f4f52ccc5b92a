package agentcfg

import "testing"

func BenchmarkZZDecide(b *testing.B) {
	for i := 0; i < b.N; i++ {
		d, _ := load([]byte(sample))
		d.address()
		out, _, _ := d.edit(testUpdate)
		Parse(out)
	}
}
func BenchmarkZZPlain(b *testing.B) {
	for i := 0; i < b.N; i++ {
		plainString("10.0.0.2")
	}
}
