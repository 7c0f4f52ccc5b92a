package broker

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
)

func TestMemoComputesOncePerKey(t *testing.T) {
	var m Memo
	var calls atomic.Int32
	bad := errors.New("bad signature")
	f := func() error { calls.Add(1); return bad }
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := m.Do("k", f); !errors.Is(err, bad) {
				t.Errorf("Do: %v", err)
			}
		}()
	}
	wg.Wait()
	if calls.Load() != 1 {
		t.Fatalf("%d computations for one key, want 1", calls.Load())
	}
	// Another key (another check, other verifying keys) has its own result.
	ok := func() error { calls.Add(1); return nil }
	for i := 0; i < 2; i++ {
		if err := m.Do("other", ok); err != nil || calls.Load() != 2 {
			t.Fatalf("other key: %v, %d calls", err, calls.Load())
		}
	}
	if err := m.Do("k", ok); !errors.Is(err, bad) || calls.Load() != 2 {
		t.Fatalf("the first key's result changed: %v, %d calls", err, calls.Load())
	}
	// Beyond maxMemo keys, each call computes (bounded memory).
	for i := 0; i < maxMemo; i++ {
		_ = m.Do(i, ok)
	}
	before := calls.Load()
	_ = m.Do(maxMemo-1, ok)
	_ = m.Do(maxMemo-1, ok)
	if calls.Load() != before+2 {
		t.Fatalf("a key beyond the bound was cached")
	}
	calls.Store(2)
	// No memo: every call computes.
	var none *Memo
	for i := 0; i < 2; i++ {
		_ = none.Do("k", ok)
	}
	if calls.Load() != 4 {
		t.Fatalf("nil memo: %d calls, want 4", calls.Load())
	}
}

func TestMemoValueIsSharedAndANilMemoComputes(t *testing.T) {
	var m Memo
	calls := 0
	f := func() (any, error) { calls++; return calls, nil }
	for i := 0; i < 3; i++ {
		if v, err := m.Value("decode", f); err != nil || v.(int) != 1 {
			t.Fatalf("Value: %v %v", v, err)
		}
	}
	if calls != 1 {
		t.Fatalf("%d computations, want 1", calls)
	}
	var none *Memo
	for i := 0; i < 2; i++ {
		if _, err := none.Value("decode", f); err != nil {
			t.Fatal(err)
		}
	}
	if calls != 3 {
		t.Fatalf("a nil memo computed %d times in 2 calls", calls-1)
	}
}
