package reconcile

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"

	"github.com/shoalfleet/shoal/spec"
)

// Container is one container this reconciler owns, as the Engine reports it.
type Container struct {
	ID            string    `json:"id"`
	Name          string    `json:"name"`
	App           string    `json:"app"`
	Hash          string    `json:"hash"`
	Spec          *spec.App `json:"-"` // the app spec it was created from; nil if unreadable
	ImageID       string    `json:"image_id"`
	State         string    `json:"state"`            // created, running, paused, restarting, exited, dead
	Health        string    `json:"health,omitempty"` // starting, healthy, unhealthy; empty with no healthcheck
	ExitCode      int       `json:"exit_code"`
	RestartCount  int       `json:"restart_count"`
	Aside         bool      `json:"aside,omitempty"` // the previous version, renamed aside during a rollout
	Memory        int64     `json:"memory"`
	NanoCPUs      int64     `json:"nano_cpus"`
	RestartPolicy string    `json:"restart_policy"`
}

// LoadedImage is an image Shoal brought onto the device (loaded from a tar or pulled).
type LoadedImage = loadedImage

// Observed is what the Engine runs that matters to one device's plan.
type Observed struct {
	Containers []Container            // owned by this reconciler (its prefix)
	Images     map[string]string      // image ref the spec names -> local image ID; absent when not present
	Loaded     map[string]LoadedImage // images Shoal brought in, by ref (pruned when unreferenced)
	Networks   map[string]bool        // networks that exist, by name
	OwnNets    map[string]bool        // networks this reconciler created, by name
	DupNets    map[string]bool        // network names the Engine holds more than once
	Applied    map[string]string      // app -> spec hash last applied by this reconciler
	Failed     map[string]string      // app -> spec hash rolled back after failing its health gate
}

// Observe lists this reconciler's containers and the images and networks dev
// refers to. It only reads. An Engine failure wraps ErrEngine.
func (r *Reconciler) Observe(ctx context.Context, dev *spec.Device) (*Observed, error) {
	f := filters.NewArgs(
		filters.Arg("label", LabelManagedBy+"="+managedByValue),
		filters.Arg("label", LabelPrefix+"="+r.o.Prefix),
	)
	list, err := r.eng.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
	if err != nil {
		return nil, fmt.Errorf("%w: list containers: %w", ErrEngine, err)
	}
	obs := &Observed{
		Containers: make([]Container, len(list)),
		Images:     map[string]string{},
		Networks:   map[string]bool{},
		OwnNets:    map[string]bool{},
		DupNets:    map[string]bool{},
	}
	// Inspect in parallel: exit code, restart count, health and resources are not in the list.
	var (
		wg       sync.WaitGroup
		sem      = make(chan struct{}, 16)
		mu       sync.Mutex
		firstErr error
	)
	for i, s := range list {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			c, err := r.inspectContainer(ctx, s.ID)
			if err != nil {
				if cerrdefs.IsNotFound(err) { // removed between list and inspect
					return
				}
				mu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
				return
			}
			obs.Containers[i] = c
		}()
	}
	refs := map[string]bool{}
	if dev != nil {
		for i := range dev.Apps {
			refs[dev.Apps[i].Image.Ref] = true
		}
	}
	for ref := range refs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			ins, err := r.eng.ImageInspect(ctx, ref)
			if err != nil {
				if !cerrdefs.IsNotFound(err) {
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("inspect image %q: %w", ref, err)
					}
					mu.Unlock()
				}
				return
			}
			mu.Lock()
			obs.Images[ref] = ins.ID
			mu.Unlock()
		}()
	}
	nets, nerr := r.eng.NetworkList(ctx, network.ListOptions{})
	wg.Wait()
	if firstErr != nil {
		return nil, fmt.Errorf("%w: %w", ErrEngine, firstErr)
	}
	if nerr != nil {
		return nil, fmt.Errorf("%w: list networks: %w", ErrEngine, nerr)
	}
	for _, n := range nets {
		if obs.Networks[n.Name] {
			obs.DupNets[n.Name] = true
		}
		obs.Networks[n.Name] = true
		if n.Labels[LabelManagedBy] == managedByValue && n.Labels[LabelPrefix] == r.o.Prefix {
			obs.OwnNets[n.Name] = true
		}
	}
	kept := obs.Containers[:0]
	for _, c := range obs.Containers {
		if c.ID != "" {
			kept = append(kept, c)
		}
	}
	obs.Containers = kept
	sort.Slice(obs.Containers, func(i, j int) bool { return obs.Containers[i].Name < obs.Containers[j].Name })

	if obs.Loaded, err = r.images.read(); err != nil {
		return nil, err
	}
	r.mu.Lock()
	obs.Applied = cloneMap(r.applied)
	obs.Failed = cloneMap(r.failed)
	r.mu.Unlock()
	return obs, nil
}

func (r *Reconciler) inspectContainer(ctx context.Context, id string) (Container, error) {
	ins, err := r.eng.ContainerInspect(ctx, id)
	if err != nil {
		return Container{}, err
	}
	c := Container{
		ID:      ins.ID,
		Name:    strings.TrimPrefix(ins.Name, "/"),
		ImageID: ins.Image,
	}
	if ins.Config != nil {
		c.App = ins.Config.Labels[LabelApp]
		c.Hash = ins.Config.Labels[LabelHash]
		if s := ins.Config.Labels[LabelSpec]; s != "" {
			var a spec.App
			if json.Unmarshal([]byte(s), &a) == nil {
				c.Spec = &a
			}
		}
	}
	if st := ins.State; st != nil {
		c.State = string(st.Status)
		c.ExitCode = st.ExitCode
		if st.Health != nil && st.Health.Status != container.NoHealthcheck {
			c.Health = st.Health.Status
		}
	}
	c.RestartCount = ins.RestartCount
	if hc := ins.HostConfig; hc != nil {
		c.Memory = hc.Memory
		c.NanoCPUs = hc.NanoCPUs
		c.RestartPolicy = string(hc.RestartPolicy.Name)
	}
	c.Aside = strings.HasSuffix(c.Name, "--prev")
	return c, nil
}

func cloneMap(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
