package source

import (
	"errors"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/internal/sshdtest"
)

func TestSSHFetchChecksHostKey(t *testing.T) {
	r := newGitRepo(t)
	want := r.Commit(map[string]string{"f": "over ssh"}, "x")
	keys := t.TempDir()
	clientKey, clientPub := sshdtest.Key(t, keys, "client")
	otherKey, _ := sshdtest.Key(t, keys, "stranger")
	_, wrongHostPub := sshdtest.Key(t, keys, "impostor")
	srv := sshdtest.Start(t, clientPub)

	url := srv.URL(r.Dir)
	tests := []struct {
		name       string
		key        string
		knownHosts string
		wantErr    error
	}{
		{"authorized key, known host", clientKey, srv.KnownHosts(t, srv.HostPub), nil},
		{"host key not the known one", clientKey, srv.KnownHosts(t, wrongHostPub), ErrAuth},
		{"client key not authorized", otherKey, srv.KnownHosts(t, srv.HostPub), ErrAuth},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSource(t, Options{URL: url, Timeout: 20 * time.Second,
				Auth: Auth{SSHKeyFile: tt.key, KnownHostsFile: tt.knownHosts}})
			rev, err := s.Fetch(t.Context(), "")
			if tt.wantErr == nil {
				if err != nil || rev.Commit != want {
					t.Fatalf("fetch over ssh: %v %v", rev, err)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) || Stalled(err) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			t.Logf("refused: %v", err)
		})
	}
}
