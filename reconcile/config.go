package reconcile

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/go-connections/nat"

	"github.com/shoalfleet/shoal/spec"
)

// networksOf returns the networks app joins: its own list, or the device's fleet network.
func networksOf(dev *spec.Device, app *spec.App) []string {
	if len(app.Networks) > 0 {
		return app.Networks
	}
	if dev.Network != "" {
		return []string{dev.Network}
	}
	return []string{"bridge"}
}

// specHash is the per-app hash on the container label: the app's own spec hash
// and the networks it lands on (the fleet network comes from the device).
func specHash(dev *spec.Device, app *spec.App) string {
	h := sha256.New()
	h.Write([]byte(app.Hash()))
	h.Write([]byte("\x00" + strings.Join(networksOf(dev, app), ",")))
	return hex.EncodeToString(h.Sum(nil))
}

// fieldError names the spec field a bad value came from.
type fieldError struct {
	field string
	msg   string
}

func (e *fieldError) Error() string { return e.field + ": " + e.msg }

// containerConfig translates app into the Engine's create request.
func (r *Reconciler) containerConfig(dev *spec.Device, app *spec.App) (*container.Config, *container.HostConfig, *network.NetworkingConfig, error) {
	specJSON, err := json.Marshal(app)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("marshal app: %w", err)
	}
	labels := map[string]string{}
	for k, v := range app.Labels {
		labels[k] = v
	}
	for k, v := range r.ownLabels() {
		labels[k] = v
	}
	labels[LabelApp] = app.Name
	labels[LabelHash] = specHash(dev, app)
	labels[LabelSpec] = string(specJSON)

	env := make([]string, 0, len(app.Env))
	for k, v := range app.Env {
		env = append(env, k+"="+v)
	}
	sort.Strings(env)

	cfg := &container.Config{
		Image:      app.Image.Ref,
		Cmd:        app.Command,
		Entrypoint: app.Entrypoint,
		Env:        env,
		User:       app.User,
		Labels:     labels,
	}
	if hc := app.Healthcheck; hc != nil && len(hc.Test) > 0 {
		cfg.Healthcheck = &container.HealthConfig{
			Test:        hc.Test,
			Interval:    hc.Interval.D(),
			Timeout:     hc.Timeout.D(),
			Retries:     hc.Retries,
			StartPeriod: hc.StartPeriod.D(),
		}
	}

	host := &container.HostConfig{
		CapAdd:         app.CapAdd,
		CapDrop:        app.CapDrop,
		ReadonlyRootfs: app.ReadOnly,
		Resources: container.Resources{
			Memory:   app.Memory,
			NanoCPUs: int64(app.CPUs * 1e9),
		},
	}
	switch app.Restart {
	case "", "no":
		host.RestartPolicy = container.RestartPolicy{Name: container.RestartPolicyDisabled}
	case "always", "unless-stopped", "on-failure":
		host.RestartPolicy = container.RestartPolicy{Name: container.RestartPolicyMode(app.Restart)}
	default:
		return nil, nil, nil, &fieldError{"restart", fmt.Sprintf("unknown policy %q (no, always, unless-stopped, on-failure)", app.Restart)}
	}
	if app.Logging.MaxSize != "" || app.Logging.MaxFiles > 0 {
		lc := map[string]string{}
		if app.Logging.MaxSize != "" {
			lc["max-size"] = app.Logging.MaxSize
		}
		if app.Logging.MaxFiles > 0 {
			lc["max-file"] = strconv.Itoa(app.Logging.MaxFiles)
		}
		host.LogConfig = container.LogConfig{Type: "json-file", Config: lc}
	}

	if len(app.Ports) > 0 {
		cfg.ExposedPorts = nat.PortSet{}
		host.PortBindings = nat.PortMap{}
		for i, p := range app.Ports {
			proto := p.Protocol
			if proto == "" {
				proto = "tcp"
			}
			if proto != "tcp" && proto != "udp" {
				return nil, nil, nil, &fieldError{fmt.Sprintf("ports[%d].protocol", i), fmt.Sprintf("%q is not tcp or udp", p.Protocol)}
			}
			cp, err := nat.NewPort(proto, strconv.Itoa(p.Container))
			if err != nil {
				return nil, nil, nil, &fieldError{fmt.Sprintf("ports[%d].container", i), err.Error()}
			}
			cfg.ExposedPorts[cp] = struct{}{}
			host.PortBindings[cp] = append(host.PortBindings[cp], nat.PortBinding{HostIP: p.HostIP, HostPort: strconv.Itoa(p.Host)})
		}
	}

	for i, v := range app.Volumes {
		m := mount.Mount{Source: v.Source, Target: v.Target, ReadOnly: v.ReadOnly}
		switch v.Type {
		case "bind":
			m.Type = mount.TypeBind
			if !strings.HasPrefix(v.Source, "/") {
				return nil, nil, nil, &fieldError{fmt.Sprintf("volumes[%d].source", i), fmt.Sprintf("bind source %q is not an absolute path", v.Source)}
			}
		case "volume", "":
			m.Type = mount.TypeVolume
			m.Source = r.volumeName(v.Source)
			m.VolumeOptions = &mount.VolumeOptions{Labels: r.ownLabels()}
		default:
			return nil, nil, nil, &fieldError{fmt.Sprintf("volumes[%d].type", i), fmt.Sprintf("%q is not volume or bind", v.Type)}
		}
		host.Mounts = append(host.Mounts, m)
	}

	for i, d := range app.Devices {
		parts := strings.Split(d, ":")
		dm := container.DeviceMapping{PathOnHost: parts[0], PathInContainer: parts[0], CgroupPermissions: "rwm"}
		if len(parts) > 1 && parts[1] != "" {
			dm.PathInContainer = parts[1]
		}
		if len(parts) > 2 && parts[2] != "" {
			dm.CgroupPermissions = parts[2]
		}
		if len(parts) > 3 || !strings.HasPrefix(dm.PathOnHost, "/") {
			return nil, nil, nil, &fieldError{fmt.Sprintf("devices[%d]", i), fmt.Sprintf("%q is not host[:container[:perms]] with absolute paths", d)}
		}
		host.Resources.Devices = append(host.Resources.Devices, dm)
	}

	nets := networksOf(dev, app)
	host.NetworkMode = container.NetworkMode(nets[0])
	netCfg := &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{
		nets[0]: endpoint(nets[0], app.Name),
	}}
	return cfg, host, netCfg, nil
}

// endpoint lets other apps on the network reach this one by its app name
// (user-defined networks only: the default bridge has no aliases).
func endpoint(net, app string) *network.EndpointSettings {
	if net == "bridge" || net == "host" || net == "none" {
		return &network.EndpointSettings{}
	}
	return &network.EndpointSettings{Aliases: []string{app}}
}
