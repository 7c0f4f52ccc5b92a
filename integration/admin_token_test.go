package integration

import (
	"path/filepath"
	"testing"

	"github.com/tandem-ha/tandem/internal/admintoken"
)

// adminToken is s's admin token, DATA/admin.token, which the server
// created on its first start.
func adminToken(t testing.TB, s *server) string {
	t.Helper()
	tok, err := admintoken.Read(filepath.Join(s.dir, "data", admintoken.FileName))
	if err != nil {
		t.Fatalf("%s: %v", s.name, err)
	}
	return tok
}
