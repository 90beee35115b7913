// Command bare is the baseline for the agent's idle memory: a static binary
// that links the six libraries the agent is built on (go-git, the Docker
// client, go-tpm, CUE, the Prometheus client, beevik/ntp), runs their package
// initialisation, and then waits for SIGTERM doing nothing.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"cuelang.org/go/cue/cuecontext"
	"github.com/beevik/ntp"
	"github.com/docker/docker/client"
	"github.com/go-git/go-git/v5"
	"github.com/google/go-tpm/tpm2"
	"github.com/prometheus/client_golang/prometheus"
)

// linked keeps one entry point of each library in the binary.
var linked = []any{git.PlainOpen, client.NewClientWithOpts, tpm2.ReadPublic{}, cuecontext.New, prometheus.NewRegistry, ntp.QueryWithOptions}

func main() {
	if len(os.Args) > 1 {
		fmt.Println(len(linked))
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	<-ctx.Done()
}
