package agentcfg

import (
	"os"
	"strconv"
	"testing"
	"time"
)

func TestZZExp(t *testing.T) {
	if os.Getenv("EXP") == "" {
		return
	}
	n := 10000
	files := make([]string, 0)
	dir := t.TempDir()
	for i := 0; i < n; i++ {
		p := dir + "/agents/" + strconv.Itoa(i) + "/conf/address.yaml"
		writeFile(t, p, sample)
		files = append(files, p)
	}
	content, _ := Edit([]byte(sample), testUpdate)
	for _, g := range []int{256, 256, 256} {
		groupMax = g
		for _, w := range []int{4} {
			reset := func() {
				for _, f := range files {
					os.WriteFile(f, []byte(sample), 0o644)
				}
				syncAll(files[0])
			}
			reset()
			t0 := time.Now()
			floorT(files, content, w)
			fl := time.Since(t0)
			reset()
			t0 = time.Now()
			RewriteAll(files, testUpdate, BatchOptions{Workers: w})
			rw := time.Since(t0)
			t.Logf("group %d workers %d: floor %v rewrite %v ratio %.2f", g, w, fl, rw, float64(rw)/float64(fl))
		}
	}
}

func syncAll(p string) { _ = fsyncFS(p) }
