package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/provision"
)

// newReceiptsCmd is `shoal receipts`: carry receipts from a stick to the hub.
func newReceiptsCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "receipts", Short: "Receipts devices left on a stick after applying bundles"}
	var oc opConn
	imp := &cobra.Command{
		Use:   "import DIR",
		Short: "Send every receipt in DIR to the hub, which checks and records them",
		Long: `import reads DIR/*.receipt.json, checks each receipt's own signature, and
sends the good ones to the hub (POST /v1/admin/receipts), which checks each
against the device's enrolled key and records it, so the device's offline
work shows on the status page and in "shoal fleet device". A receipt the hub
already has is reported as a duplicate and counts as accepted. Receipts
that fail here or at the hub are listed; the exit code is 1 if any did.`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageError{errors.New("receipts import takes one DIR")}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			raws, _, errs := provision.ReadReceipts(args[0])
			w := cmd.OutOrStdout()
			for _, err := range errs {
				fmt.Fprintf(w, "refused  %v\n", err)
			}
			if len(raws) == 0 {
				fmt.Fprintf(w, "no good receipts in %s\n", args[0])
				if len(errs) > 0 {
					return silentError{exitInvalid}
				}
				return nil
			}
			bad := len(errs)
			// In batches the hub takes whole.
			for len(raws) > 0 {
				n := min(len(raws), api.MaxReceiptBatch)
				var res api.ReceiptBatchResult
				if err := oc.do(cmd.Context(), "POST", "/v1/admin/receipts", api.ReceiptBatch{APIVersion: api.ReceiptVersion, Receipts: raws[:n]}, &res); err != nil {
					return err
				}
				raws = raws[n:]
				for _, o := range res.Outcomes {
					switch {
					case o.Accepted && o.Duplicate:
						fmt.Fprintf(w, "accepted %s %s %s (already recorded)\n", o.DeviceID, o.Result, short12(o.BundleHash))
					case o.Accepted:
						fmt.Fprintf(w, "accepted %s %s %s\n", o.DeviceID, o.Result, short12(o.BundleHash))
					default:
						bad++
						fmt.Fprintf(w, "refused  %s %s: %s (%s)\n", o.DeviceID, short12(o.BundleHash), o.Message, o.Reason)
					}
				}
			}
			if bad > 0 {
				return silentError{exitInvalid}
			}
			return nil
		},
	}
	oc.flags(imp)
	cmd.AddCommand(imp)
	return cmd
}

func short12(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return s
}
