package spec

import (
	"os"
	"testing"
)

// BenchmarkRender renders one device of a generated fleet
// (go run ./bench/fleetgen -devices 1000 -out /tmp/fleet1k), or of the example.
func BenchmarkRender(b *testing.B) {
	dir, id := os.Getenv("SHOAL_BENCH_FLEET"), "dev-000003"
	if dir == "" {
		dir, id = "../fleet-repo-example", "gw-03"
	}
	f, err := Load(os.DirFS(dir))
	if err != nil {
		b.Fatal(err)
	}
	ids := f.DeviceIDs()
	if _, err := f.Render(id); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := f.Render(ids[i%len(ids)]); err != nil {
			b.Fatal(err)
		}
	}
}
