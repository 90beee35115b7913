package agent

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/shoalfleet/shoal/api"
)

// Resources is what the device has left: load, memory, disk and uptime.
type Resources struct {
	Load1       float64       `json:"load1"`
	Load5       float64       `json:"load5"`
	CPUs        int           `json:"cpus"`
	MemTotal    uint64        `json:"memTotal"`     // bytes
	MemAvail    uint64        `json:"memAvailable"` // bytes
	StateDisk   *Disk         `json:"stateDisk,omitempty"`
	DockerDisk  *Disk         `json:"dockerDisk,omitempty"`
	Uptime      time.Duration `json:"uptime"`
	AgentRSS    uint64        `json:"agentRSS"` // bytes
	Unavailable []string      `json:"unavailable,omitempty"`
}

// Disk is the use of the file system holding a directory.
type Disk struct {
	Path  string `json:"path"`
	Total uint64 `json:"total"` // bytes
	Free  uint64 `json:"free"`  // bytes available to unprivileged users
}

// ReadResources reads /proc and statfs. What cannot be read is listed in
// Unavailable rather than failing the report.
func ReadResources(stateDir, dockerRoot string) *Resources {
	r := &Resources{}
	miss := func(what string, err error) {
		r.Unavailable = append(r.Unavailable, fmt.Sprintf("%s: %v", what, err))
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		f := strings.Fields(string(b))
		if len(f) >= 2 {
			r.Load1, _ = strconv.ParseFloat(f[0], 64)
			r.Load5, _ = strconv.ParseFloat(f[1], 64)
		}
	} else {
		miss("load", err)
	}
	r.CPUs = runtime.NumCPU()
	if m, err := meminfo("/proc/meminfo"); err == nil {
		r.MemTotal, r.MemAvail = m["MemTotal"], m["MemAvailable"]
	} else {
		miss("memory", err)
	}
	if m, err := meminfo("/proc/self/status"); err == nil {
		r.AgentRSS = m["VmRSS"]
	}
	if b, err := os.ReadFile("/proc/uptime"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 0 {
			s, _ := strconv.ParseFloat(f[0], 64)
			r.Uptime = time.Duration(s * float64(time.Second)).Truncate(time.Second)
		}
	} else {
		miss("uptime", err)
	}
	for _, d := range []struct {
		path string
		dst  **Disk
	}{{stateDir, &r.StateDisk}, {dockerRoot, &r.DockerDisk}} {
		if d.path == "" {
			continue
		}
		var st syscall.Statfs_t
		if err := syscall.Statfs(d.path, &st); err != nil {
			miss("disk "+d.path, err)
			continue
		}
		*d.dst = &Disk{Path: d.path, Total: st.Blocks * uint64(st.Bsize), Free: st.Bavail * uint64(st.Bsize)}
	}
	return r
}

// meminfo reads "Key: N kB" lines into bytes.
func meminfo(path string) (map[string]uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	m := map[string]uint64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fs := strings.Fields(v)
		if len(fs) == 0 {
			continue
		}
		n, err := strconv.ParseUint(fs[0], 10, 64)
		if err != nil {
			continue
		}
		if len(fs) > 1 && fs[1] == "kB" {
			n *= 1024
		}
		m[k] = n
	}
	return m, sc.Err()
}

// api is r as the status report carries it.
func (r *Resources) api() *api.Resources {
	if r == nil {
		return nil
	}
	out := &api.Resources{Load1: r.Load1, CPUs: r.CPUs, MemTotal: r.MemTotal, MemAvailable: r.MemAvail,
		UptimeSeconds: int64(r.Uptime.Seconds()), AgentRSS: r.AgentRSS}
	if r.StateDisk != nil {
		out.StateDiskTotal, out.StateDiskFree = r.StateDisk.Total, r.StateDisk.Free
	}
	if r.DockerDisk != nil {
		out.DockerDiskTotal, out.DockerDiskFree = r.DockerDisk.Total, r.DockerDisk.Free
	}
	return out
}
