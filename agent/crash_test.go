package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/shoalfleet/shoal/api"
)

// httpReporter posts reports to a test hub.
type httpReporter struct{ url string }

func (h httpReporter) Report(ctx context.Context, s api.Status) error {
	b, _ := json.Marshal(s)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.url, bytes.NewReader(b))
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("hub: %s", resp.Status)
	}
	return nil
}

// TestCrashChild is the agent process TestKill9 kills; it passes at once
// unless re-executed by it.
func TestCrashChild(t *testing.T) {
	if os.Getenv("SHOAL_CRASH_CHILD") != "1" {
		return
	}
	cfg := testConfig(t, os.Getenv("SHOAL_CRASH_REPO"))
	cfg.StateDir = os.Getenv("SHOAL_CRASH_STATE")
	cfg.PollInterval = Duration(2 * time.Millisecond)
	cfg.OutboxMax = 100000
	a, _ := newTestAgent(t, cfg, &fakeStage{name: "containers"})
	a.o.Reporter = httpReporter{url: os.Getenv("SHOAL_CRASH_HUB")}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := a.Run(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestKill9 kills the agent process with SIGKILL at random moments until it
// has completed 200 passes: state.json always parses, and the hub gets every
// report numbered 1..n, in order of first arrival, storing each once.
func TestKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("kill -9 across 200 passes takes a while")
	}
	r := newGitRepo(t)
	r.Commit(fleetFiles(), "fleet")
	stateDir := filepath.Join(t.TempDir(), "state")
	// The children's own temporary directories are never removed by them
	// (they are killed): keep them under this test's, which is.
	childTmp := t.TempDir()

	var mu sync.Mutex
	deliveries := map[uint64]int{}
	var firstOrder []uint64
	hubSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		var s api.Status
		if err := json.NewDecoder(req.Body).Decode(&s); err != nil || s.Validate() != nil {
			http.Error(w, "bad report", http.StatusBadRequest)
			return
		}
		mu.Lock()
		deliveries[s.Seq]++
		if deliveries[s.Seq] == 1 {
			firstOrder = append(firstOrder, s.Seq)
		}
		mu.Unlock()
	}))
	t.Cleanup(hubSrv.Close)

	start := func() *exec.Cmd {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), "SHOAL_CRASH_CHILD=1", "SHOAL_CRASH_STATE="+stateDir,
			"SHOAL_CRASH_REPO=file://"+r.Dir, "SHOAL_CRASH_HUB="+hubSrv.URL, "TMPDIR="+childTmp)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		return cmd
	}
	kills := 0
	var passes uint64
	// The kill comes at a random moment within window of the start. A busy
	// machine can take longer than that to start the process and finish a
	// pass; after a run that completed none, the window grows, so kills still
	// land at every stage of a pass whatever the load.
	window := 200 * time.Millisecond
	for i := 0; passes < 200; i++ {
		if i > 2000 {
			t.Fatalf("only %d passes after %d runs", passes, i)
		}
		if i%7 == 3 {
			r.Commit(map[string]string{"devices/d1.yaml": fmt.Sprintf("labels:\n  role: web\n  rev: \"%d\"\n", i)}, "change "+strconv.Itoa(i))
		}
		cmd := start()
		<-time.After(40*time.Millisecond + rand.N(window))
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
		kills++
		st, err := ReadState(stateDir)
		if err != nil {
			t.Fatalf("after kill %d: state.json: %v", kills, err)
		}
		if st.Passes == passes {
			window = min(window*3/2, 10*time.Second)
		}
		passes = st.Passes
		checkOutboxFiles(t, filepath.Join(stateDir, "outbox"))
	}
	// Let a last run deliver everything, then stop it.
	cmd := start()
	var seq uint64
	waitFor(t, 60*time.Second, "the outbox to drain", func() bool {
		b, err := os.ReadFile(filepath.Join(stateDir, "outbox", "meta.json"))
		if err != nil {
			return false
		}
		var m outboxMeta
		if json.Unmarshal(b, &m) != nil {
			return false
		}
		ents, _ := filepath.Glob(filepath.Join(stateDir, "outbox", "0*.json"))
		mu.Lock()
		defer mu.Unlock()
		seq = m.Seq
		return len(ents) == 0 && deliveries[m.Seq] > 0
	})
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()

	mu.Lock()
	defer mu.Unlock()
	resent := 0
	for s := uint64(1); s <= seq; s++ {
		switch n := deliveries[s]; {
		case n == 0:
			t.Errorf("report %d lost", s)
		case n > 1:
			resent += n - 1
		}
	}
	for i, s := range firstOrder {
		if i > 0 && s < firstOrder[i-1] {
			t.Errorf("report %d first arrived after %d: out of order", s, firstOrder[i-1])
		}
	}
	if len(deliveries) != int(seq) {
		t.Errorf("hub stored %d distinct reports, agent numbered %d", len(deliveries), seq)
	}
	// A report resent is one whose delivery was cut by a kill before the
	// agent could record it: at most one per kill, and the hub stores it once.
	if resent > kills {
		t.Errorf("%d resends for %d kills", resent, kills)
	}
	t.Logf("%d passes, %d kills, %d reports, each stored once; %d resent after a kill cut their delivery", passes, kills, seq, resent)
}

func checkOutboxFiles(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			continue // a temp file a kill left: cleaned at start, never read
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if !json.Valid(b) {
			t.Fatalf("outbox file %s is not valid JSON after a kill", e.Name())
		}
	}
}
