package reconcile

import (
	"context"
	"sync"
	"testing"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
)

// TestNetworkSharedByTwoDevices: two devices on one Engine whose specs name
// the same network, reconciling at the same moment, end (by their second
// pass at the latest) with one network of that name, and both devices'
// apps run on it. The Engine lets two concurrent creates of one name both
// succeed, and containers then cannot join it by name.
func TestNetworkSharedByTwoDevices(t *testing.T) {
	for round := range 3 {
		a, b := newEnv(t, nil), newEnv(t, nil)
		// The network carries the label of whichever device made it: both
		// devices' containers go before either cleanup removes it.
		t.Cleanup(func() {
			for _, e := range []*env{a, b} {
				e.cli.ContainerRemove(context.Background(), e.prefix+"worker", container.RemoveOptions{Force: true})
			}
		})
		name := "shared-" + randHex(4)
		devs := map[*env]*Result{}
		var mu sync.Mutex
		var wg sync.WaitGroup
		start := make(chan struct{})
		for _, e := range []*env{a, b} {
			dev := e.device(e.plainApp("worker"))
			dev.Network = name
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				// The first pass may fail on the other device's copy of
				// the network; the next settles it, as an agent's retry does.
				e.r.Reconcile(context.Background(), dev)
				res, err := e.r.Reconcile(context.Background(), dev)
				if err != nil {
					t.Errorf("round %d: reconcile %s again: %v", round, e.prefix, err)
				}
				mu.Lock()
				devs[e] = res
				mu.Unlock()
			}()
		}
		close(start)
		wg.Wait()
		ns, err := a.cli.NetworkList(context.Background(), network.ListOptions{Filters: filters.NewArgs(filters.Arg("name", name))})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, x := range ns {
			if x.Name == name {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("round %d: %d networks named %s, want 1", round, n, name)
		}
		for _, e := range []*env{a, b} {
			if res := devs[e]; res == nil || !res.Converged() {
				t.Fatalf("round %d: %s did not converge: %+v", round, e.prefix, res)
			}
			if _, state := e.inspect("worker"); state != "running" {
				t.Errorf("round %d: %sworker is %s", round, e.prefix, state)
			}
		}
	}
}
