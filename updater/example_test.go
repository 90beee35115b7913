package updater_test

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/shoalfleet/shoal/spec"
	"github.com/shoalfleet/shoal/updater"
)

// The agent builds one Updater from its config and calls Step on every pass
// with the rendered device's release and update policy, and its health gate.
func ExampleUpdater_Step() {
	cfg := updater.Config{
		SlotA: "/dev/mmcblk0p2", SlotB: "/dev/mmcblk0p3",
		Bootloader: "uboot", TrustRoots: "/etc/shoal/update-keys.pem",
	}
	o, err := cfg.Options("/var/lib/shoal")
	if err != nil {
		slog.Error("updater config", "err", err)
		return
	}
	o.Logger = slog.Default()
	u, err := updater.New(o)
	if err != nil {
		return
	}
	var dev spec.Device                                    // rendered for this device
	gate := func(ctx context.Context) error { return nil } // containers healthy, hub or offline-ok, clock, attestation
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	st, err := u.Step(ctx, dev.Release, dev.Update, gate)
	switch {
	case errors.Is(err, updater.ErrSignature), errors.Is(err, updater.ErrDowngrade), errors.Is(err, updater.ErrReleaseBad):
		// stalled: needs a new release; report st.Reason
	case err != nil:
		// waiting: retry with backoff (network, a failed verify of the download)
	}
	_ = st // copy Phase, Committed, Target, Progress, Waiting, NextWindow, Reason into the status report
}
