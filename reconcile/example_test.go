package reconcile_test

import (
	"context"
	"fmt"
	"os"

	"github.com/shoalfleet/shoal/reconcile"
	"github.com/shoalfleet/shoal/spec"
)

// What `shoal plan --device ID DIR` does: render the device, observe the local
// Engine and print the plan, writing nothing.
func ExampleReconciler_DryRun() {
	ctx := context.Background()
	fleet, err := spec.Load(os.DirFS("fleet-repo"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}
	dev, err := fleet.Render("kiosk-01")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}
	cli, err := reconcile.NewClient()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}
	defer cli.Close()
	r, err := reconcile.New(cli, reconcile.Options{RepoRoot: os.DirFS("fleet-repo")})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}
	p, err := r.DryRun(ctx, dev)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}
	fmt.Print(p)
}

// One agent pass over containers, and the Docker events that trigger the next.
func ExampleReconciler_Reconcile() {
	ctx := context.Background()
	cli, err := reconcile.NewClient()
	if err != nil {
		return
	}
	r, err := reconcile.New(cli, reconcile.Options{ImageCache: "/var/lib/shoal/images"})
	if err != nil {
		return
	}
	go r.Watch(ctx, func() { /* queue a pass with reason "drift" */ })
	var dev *spec.Device // the rendered spec of this device
	res, err := r.Reconcile(ctx, dev)
	if res != nil {
		fmt.Println(res.Summary(), res.Converged())
	}
	_ = err // errors.Is(err, reconcile.ErrEngine): retry with backoff; Reason()/Stalled() for status
}
