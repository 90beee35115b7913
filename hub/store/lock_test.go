package store_test

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/shoalfleet/shoal/hub/store"
)

func TestHubLock(t *testing.T) {
	db := "sqlite://" + filepath.Join(t.TempDir(), "hub.db")
	release, err := store.HubLock(db)
	if err != nil {
		t.Fatal(err)
	}
	_, err = store.HubLock(db)
	if !errors.Is(err, store.ErrLocked) || !strings.Contains(err.Error(), "process "+strconv.Itoa(os.Getpid())) || !strings.Contains(err.Error(), "PostgreSQL") {
		t.Fatalf("second lock: %v, want ErrLocked naming this process", err)
	}
	if err := release(); err != nil {
		t.Fatal(err)
	}
	release, err = store.HubLock(db)
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	release()
	for range 2 {
		r, err := store.HubLock("postgres://localhost/shoal")
		if err != nil {
			t.Fatalf("postgres: %v", err)
		}
		defer r()
	}
}
