package reconcile

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"

	"github.com/shoalfleet/shoal/internal/dockertest"
)

// TestConvergeNoopUpdateRemove drives the whole life of a device's apps against
// the real Engine: create in depends_on order, a no-op pass, an env change
// rolled out in place, and removal of an app no longer in the spec.
func TestConvergeNoopUpdateRemove(t *testing.T) {
	e := newEnv(t, nil)
	port := freePort(t)
	db := e.webApp("db", freePort(t), "db1")
	web := e.webApp("web", port, "1")
	web.DependsOn = []string{"db"}
	worker := e.plainApp("worker")
	dev := e.device(db, web, worker)

	res := e.mustReconcile(dev)
	for _, name := range []string{"db", "web", "worker"} {
		if a := appResult(t, res, name); a.Outcome != OutcomeCreated || a.State != "running" {
			t.Errorf("%s: outcome %q state %q, want created/running", name, a.Outcome, a.State)
		}
	}
	if got := get(t, port); got != "version=1" {
		t.Fatalf("web answers %q, want version=1", got)
	}

	// depends_on: web started only after db was healthy.
	ctx := context.Background()
	dbIns, err := e.cli.ContainerInspect(ctx, e.prefix+"db")
	if err != nil {
		t.Fatal(err)
	}
	webIns, err := e.cli.ContainerInspect(ctx, e.prefix+"web")
	if err != nil {
		t.Fatal(err)
	}
	var firstHealthy time.Time
	for _, l := range dbIns.State.Health.Log {
		if l.ExitCode == 0 {
			firstHealthy = l.End
			break
		}
	}
	webStart, _ := time.Parse(time.RFC3339Nano, webIns.State.StartedAt)
	if firstHealthy.IsZero() || webStart.Before(firstHealthy) {
		t.Errorf("web started at %s, db first healthy at %s: depends_on not honoured", webStart, firstHealthy)
	}

	// Ownership labels, and the fleet network with the app's alias.
	l := webIns.Config.Labels
	if l[LabelManagedBy] != "shoal" || l[LabelApp] != "web" || l[LabelPrefix] != e.prefix || l[LabelHash] != specHash(dev, &dev.Apps[1]) {
		t.Errorf("labels %v", l)
	}
	if ep := webIns.NetworkSettings.Networks[dev.Network]; ep == nil || !contains(ep.Aliases, "web") {
		t.Errorf("web not on fleet network %q with alias web: %+v", dev.Network, webIns.NetworkSettings.Networks)
	}

	// A second pass with nothing changed plans only keeps.
	p := e.plan(dev)
	if p.Changes() != 0 {
		t.Fatalf("no-op plan has changes:\n%s", p)
	}
	res = e.mustReconcile(dev)
	for _, a := range res.Apps {
		if a.Outcome != OutcomeUnchanged {
			t.Errorf("%s: outcome %q on a no-op pass", a.App, a.Outcome)
		}
	}

	// Change web's env: a recreate with a reason a person reads, the old container gone.
	oldID, _ := e.inspect("web")
	dev.Apps[1].Env["VERSION"] = "2"
	p = e.plan(dev)
	if !hasAction(p, KindRecreate, "web", "env VERSION changed") {
		t.Fatalf("plan lacks recreate web with reason:\n%s", p)
	}
	res = e.mustReconcile(dev)
	if a := appResult(t, res, "web"); a.Outcome != OutcomeUpdated || a.Health != "healthy" {
		t.Fatalf("web: %+v", a)
	}
	if got := get(t, port); got != "version=2" {
		t.Fatalf("web answers %q after update, want version=2", got)
	}
	if _, err := e.cli.ContainerInspect(ctx, oldID); err == nil {
		t.Errorf("old web container %s still exists", oldID[:12])
	}
	if id, _ := e.inspect("web--prev"); id != "" {
		t.Errorf("aside container left behind")
	}

	// Drop worker from the spec: removed, with the reason.
	dev.Apps = dev.Apps[:2]
	p = e.plan(dev)
	if !hasAction(p, KindRemove, "worker", "no longer in spec") {
		t.Fatalf("plan lacks remove worker:\n%s", p)
	}
	e.mustReconcile(dev)
	if id, _ := e.inspect("worker"); id != "" {
		t.Errorf("worker still exists")
	}

	// No apps left: the fleet network Shoal created goes too.
	dev.Apps = nil
	if p := e.plan(dev); !hasAction(p, KindNetRm, "", "no app joins it") {
		t.Fatalf("plan lacks remove-network:\n%s", p)
	}
	e.mustReconcile(dev)
	if _, err := e.cli.NetworkInspect(ctx, dev.Network, network.InspectOptions{}); err == nil {
		t.Errorf("network %s still exists", dev.Network)
	}
	if p := e.plan(dev); p.Changes() != 0 {
		t.Errorf("plan not settled:\n%s", p)
	}
}

// TestNeverTouchesForeignContainers: a container with our name but not our
// labels is an error naming the app; it and another prefix's container survive.
func TestNeverTouchesForeignContainers(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	foreign, err := e.cli.ContainerCreate(ctx, &container.Config{Image: e.image, Labels: dockertest.Labels(e.label)}, nil, nil, nil, e.prefix+"web")
	if err != nil {
		t.Fatal(err)
	}
	other, err := e.cli.ContainerCreate(ctx, &container.Config{Image: e.image, Labels: map[string]string{
		dockertest.LabelKey: e.label, LabelManagedBy: "shoal", LabelPrefix: "other-" + e.prefix, LabelApp: "gone",
	}}, nil, nil, nil, "other-"+e.prefix+"gone")
	if err != nil {
		t.Fatal(err)
	}
	dev := e.device(e.plainApp("web"), e.plainApp("api"))
	res := e.reconcile(dev)
	a := appResult(t, res, "web")
	if a.Error == nil || a.Error.Field != "name" || !strings.Contains(a.Error.Error(), `app "web"`) {
		t.Fatalf("web: want a name error naming the app, got %+v", a.Error)
	}
	if b := appResult(t, res, "api"); b.Error != nil || b.State != "running" {
		t.Errorf("api not reconciled beside the failure: %+v", b)
	}
	for _, id := range []string{foreign.ID, other.ID} {
		if _, err := e.cli.ContainerInspect(ctx, id); err != nil {
			t.Errorf("foreign container %s was touched: %v", id[:12], err)
		}
	}
}

// TestHoldAppliesNothing: a held device plans the change, reports it as held, and leaves the container alone.
func TestHoldAppliesNothing(t *testing.T) {
	e := newEnv(t, nil)
	dev := e.device(e.plainApp("web"))
	e.mustReconcile(dev)
	id, _ := e.inspect("web")
	dev.Hold = true
	dev.Apps[0].Env["VERSION"] = "2"
	res := e.mustReconcile(dev)
	if !res.Held || appResult(t, res, "web").Outcome != OutcomeHeld {
		t.Fatalf("want held result, got %+v", res)
	}
	if !strings.Contains(res.Plan.String(), "held") || !hasAction(res.Plan, KindRecreate, "web", "env VERSION changed") {
		t.Errorf("held plan does not say what would change:\n%s", res.Plan)
	}
	if now, _ := e.inspect("web"); now != id {
		t.Errorf("container replaced while held")
	}
	// Drift is not reverted while held either.
	stop := 0
	if err := e.cli.ContainerStop(context.Background(), id, container.StopOptions{Timeout: &stop}); err != nil {
		t.Fatal(err)
	}
	e.mustReconcile(dev)
	if _, st := e.inspect("web"); st != "exited" {
		t.Errorf("held device reverted drift: state %q", st)
	}
	dev.Hold = false
	e.mustReconcile(dev)
	if now, st := e.inspect("web"); now == id || st != "running" {
		t.Errorf("after the hold is lifted: id changed %v, state %q", now != id, st)
	}
}

func hasAction(p *Plan, k Kind, app, reason string) bool {
	for _, a := range p.Actions {
		if a.Kind == k && a.App == app && strings.Contains(a.Reason, reason) {
			return true
		}
	}
	return false
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// TestInterruptedRollout: a previous version left aside (as a crash mid-rollout
// would leave it) is put back; one left beside a running replacement is removed.
func TestInterruptedRollout(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	dev := e.device(e.plainApp("web"), e.plainApp("api"))
	e.mustReconcile(dev)
	webID, _ := e.inspect("web")
	zero := 0
	if err := e.cli.ContainerStop(ctx, webID, container.StopOptions{Timeout: &zero}); err != nil {
		t.Fatal(err)
	}
	if err := e.cli.ContainerRename(ctx, webID, e.prefix+"web--prev"); err != nil {
		t.Fatal(err)
	}
	stale, err := e.cli.ContainerCreate(ctx, &container.Config{Image: e.image, Labels: map[string]string{
		dockertest.LabelKey: e.label, LabelManagedBy: "shoal", LabelPrefix: e.prefix, LabelApp: "api",
	}}, nil, nil, nil, e.prefix+"api--prev")
	if err != nil {
		t.Fatal(err)
	}
	p := e.plan(dev)
	if !hasAction(p, KindRestore, "web", "interrupted rollout") || !hasAction(p, KindRemove, "api", "interrupted rollout") {
		t.Fatalf("plan:\n%s", p)
	}
	e.mustReconcile(dev)
	if id, st := e.inspect("web"); id != webID || st != "running" {
		t.Errorf("web not restored: same %v state %q", id == webID, st)
	}
	if _, err := e.cli.ContainerInspect(ctx, stale.ID); err == nil {
		t.Errorf("aside api left behind")
	}
	if p := e.plan(dev); p.Changes() != 0 {
		t.Errorf("plan not settled:\n%s", p)
	}
}
