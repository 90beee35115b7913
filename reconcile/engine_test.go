package reconcile

import (
	"context"
	"net"
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/docker/docker/api/types/container"
)

// countingEngine counts ContainerList calls (one per observe attempt).
type countingEngine struct {
	Engine
	list *int
}

func (c countingEngine) ContainerList(ctx context.Context, o container.ListOptions) ([]container.Summary, error) {
	*c.list++
	return c.Engine.ContainerList(ctx, o)
}

// serve500 runs an HTTP server on a unix socket that answers every request with
// a 500, as a daemon in trouble does.
func serve500(t *testing.T, sock string) {
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int64
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusInternalServerError)
		w.Write([]byte(`{"message":"daemon in trouble"}`))
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
}
