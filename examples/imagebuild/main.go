// Command imagebuild builds the example fleet's container images from the
// source in this repository and, with -fleet, saves them as tars into a
// copy of fleet-repo-example, so that the fleet needs no registry:
//
//	go run ./examples/imagebuild -fleet ~/myfleet
//
// For each example app (sensor-aggregator, metrics-exporter) it builds the
// program static (CGO_ENABLED=0, -trimpath) for the Docker Engine's
// architecture, builds a FROM-scratch image from the app's Dockerfile
// through the Engine's build API, and with -fleet saves it (docker save
// format) to DIR/images/<app>.tar, written atomically, and sets image.ref
// and image.source.path and sha256 in DIR/apps/<app>.yaml. It prints one
// line per image: ref, tar, sha256, size. It needs Go and a Docker Engine
// (DOCKER_HOST or the default socket); nothing is pulled.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/docker/docker/client"
)

type options struct {
	fleet     string
	root      string
	refPrefix string
	tag       string
	goarch    string
	labels    map[string]string
	apps      []string
}

type labelFlag map[string]string

func (l labelFlag) String() string { return "" }

func (l labelFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("%q: want KEY=VALUE", s)
	}
	l[k] = v
	return nil
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	fs := flag.NewFlagSet("imagebuild", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: go run ./examples/imagebuild [flags]\n\n"+
			"Builds the example apps' FROM-scratch images through the Docker Engine and, with\n"+
			"-fleet DIR, saves them to DIR/images/<app>.tar and points DIR/apps/<app>.yaml at\n"+
			"them (image.ref, image.source.path, image.source.sha256).\n\nFlags:\n")
		fs.PrintDefaults()
	}
	o := &options{labels: labelFlag{}}
	fs.StringVar(&o.fleet, "fleet", "", "a copy of fleet-repo-example to save the image tars into (empty: build and tag only)")
	fs.StringVar(&o.root, "root", "", "the Shoal repository root, where examples/ is (default: found from the working directory)")
	fs.StringVar(&o.refPrefix, "ref-prefix", "shoal-example/", "image names are this prefix, the app's name and -tag")
	fs.StringVar(&o.tag, "tag", "1.0.0", "the images' tag")
	fs.StringVar(&o.goarch, "goarch", "", "GOARCH to build for (default: the Docker Engine's architecture)")
	fs.Var(labelFlag(o.labels), "label", "KEY=VALUE label on the images (repeatable)")
	apps := fs.String("apps", strings.Join(appNames(), ","), "the apps to build, comma-separated")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	for _, a := range strings.Split(*apps, ",") {
		if appByName(a) == nil {
			return nil, fmt.Errorf("-apps: unknown app %q (have %s)", a, strings.Join(appNames(), ", "))
		}
		o.apps = append(o.apps, a)
	}
	return o, nil
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "imagebuild:", err)
		return 2
	}
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		fmt.Fprintln(stderr, "imagebuild: docker client:", err)
		return 1
	}
	defer cli.Close()
	b := &builder{eng: cli, o: *o, log: stderr}
	imgs, err := b.buildAll(ctx)
	if err == nil && o.fleet != "" {
		err = b.writeFleet(ctx, imgs)
	}
	if err != nil {
		fmt.Fprintln(stderr, "imagebuild:", err)
		return 1
	}
	for _, im := range imgs {
		if im.Tar != "" {
			fmt.Fprintf(stdout, "%s\t%s\tsha256:%s\t%d bytes\n", im.Ref, im.Tar, im.SHA256, im.TarSize)
		} else {
			fmt.Fprintf(stdout, "%s\t%s\t%d bytes\n", im.Ref, im.ID, im.Size)
		}
	}
	return 0
}
