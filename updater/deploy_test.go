package updater

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoalfleet/shoal/internal/testenv"
)

// TestGRUBScriptChecks runs grub-script-check on deploy/grub/shoal.cfg, and on
// a broken copy to show the check can fail.
func TestGRUBScriptChecks(t *testing.T) {
	tool := testenv.LookPath(t, "grub-script-check", "grub-common")
	cfg := filepath.Join("..", "deploy", "grub", "shoal.cfg")
	if out, err := exec.CommandContext(context.Background(), tool, cfg).CombinedOutput(); err != nil {
		t.Fatalf("grub-script-check %s: %v: %s", cfg, err, out)
	}
	broken := filepath.Join(t.TempDir(), "broken.cfg")
	writeFile(t, broken, []byte(strings.Replace(string(fileBytes(t, cfg)), "\tfi\n", "\n", 1)))
	if err := exec.CommandContext(context.Background(), tool, broken).Run(); err == nil {
		t.Fatal("grub-script-check accepted a script with an unclosed if")
	}
}

// TestDeployScriptsMatch keeps the scripts in deploy/ and the updater on the
// same variables: what the agent writes is what the bootloader reads.
func TestDeployScriptsMatch(t *testing.T) {
	uboot := string(fileBytes(t, filepath.Join("..", "deploy", "uboot", "boot.cmd")))
	grub := string(fileBytes(t, filepath.Join("..", "deploy", "grub", "shoal.cfg")))
	tests := []struct {
		name, script, want string
	}{
		{"u-boot documents the altbootcmd the agent writes", uboot, VarAltBoot + "=" + altBootUBoot},
		{"u-boot passes the slot to the kernel", uboot, "shoal.slot=${" + VarSlot + "}"},
		{"grub loads every trial variable", grub, "load_env " + strings.Join([]string{VarSlot, VarPrev, VarUpgrade, VarCount, VarLimit}, " ")},
		{"grub counts and falls back in one write", grub, "save_env " + strings.Join([]string{VarSlot, VarUpgrade, VarCount}, " ")},
		{"grub falls back to the previous slot", grub, `set ` + VarSlot + `="${` + VarPrev + `}"`},
		{"grub passes the slot to the kernel", grub, "shoal.slot=${" + VarSlot + "}"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(tc.script, tc.want) {
				t.Fatalf("script lacks %q", tc.want)
			}
		})
	}
}
