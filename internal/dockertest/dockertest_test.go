package dockertest

import (
	"context"
	"testing"

	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
)

// TestImageAndCleanup builds an image through the real Engine and checks that
// Cleanup removes it by label.
func TestImageAndCleanup(t *testing.T) {
	cli := Client(t)
	label := Label(t, cli)
	id := Image(t, cli, "shoal-dockertest/app:"+label, label, nil)
	ctx := context.Background()
	ins, err := cli.ImageInspect(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if ins.Config.Labels[LabelKey] != label {
		t.Fatalf("image labels %v, want %s=%s", ins.Config.Labels, LabelKey, label)
	}
	Cleanup(t, cli, label)
	left, err := cli.ImageList(ctx, image.ListOptions{Filters: filters.NewArgs(filters.Arg("label", LabelKey+"="+label))})
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 0 {
		t.Fatalf("%d images left after Cleanup", len(left))
	}
}
