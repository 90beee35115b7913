# Shoal A/B boot script for U-Boot.
# Build: mkimage -A arm64 -T script -C none -n shoal -d boot.cmd boot.scr
#
# The trial-boot counting is U-Boot's own: build U-Boot with
# CONFIG_BOOTCOUNT_LIMIT=y and CONFIG_BOOTCOUNT_ENV=y. While
# upgrade_available=1, U-Boot adds one to bootcount and saves the env on every
# boot; once bootcount > bootlimit it runs altbootcmd instead of bootcmd.
# shoal-agent writes, in one env write before the trial reboot:
#   shoal_slot=<new> shoal_prev=<old> shoal_try=<slot>:<sha256 prefix>
#   upgrade_available=1 bootcount=0 bootlimit=<policy, 1..9>
#   altbootcmd=setenv shoal_slot ${shoal_prev}; setenv upgrade_available 0; setenv bootcount 0; saveenv; run bootcmd
# so the fallback to the previous slot and the end of the trial are one saveenv.
# After a healthy trial it commits with upgrade_available=0 bootcount=0.
# (updater.SimulateBoot applies exactly these rules in the tests.)
#
# Board settings, kept in the default env: shoal_devtype (mmc), shoal_devnum (0),
# shoal_part_a / shoal_part_b (partition numbers of the two root filesystems),
# bootcmd=load ${shoal_devtype} ${shoal_devnum}:1 ${scriptaddr} boot.scr; source ${scriptaddr}

if test -z "${shoal_devtype}"; then setenv shoal_devtype mmc; fi
if test -z "${shoal_devnum}"; then setenv shoal_devnum 0; fi
if test -z "${shoal_part_a}"; then setenv shoal_part_a 2; fi
if test -z "${shoal_part_b}"; then setenv shoal_part_b 3; fi

# Any value but "b" boots slot a, so an empty or damaged variable still boots.
if test "${shoal_slot}" = "b"; then
	setenv shoal_part ${shoal_part_b}
else
	setenv shoal_slot a
	setenv shoal_part ${shoal_part_a}
fi
echo "shoal: booting slot ${shoal_slot} (partition ${shoal_part}, trial=${upgrade_available}, bootcount=${bootcount}/${bootlimit})"

setenv bootargs "${bootargs} root=/dev/mmcblk${shoal_devnum}p${shoal_part} rootwait ro shoal.slot=${shoal_slot}"

if load ${shoal_devtype} ${shoal_devnum}:${shoal_part} ${kernel_addr_r} /boot/Image; then
	if load ${shoal_devtype} ${shoal_devnum}:${shoal_part} ${fdt_addr_r} /boot/dtbs/${fdtfile}; then
		booti ${kernel_addr_r} - ${fdt_addr_r}
	fi
fi

# The slot did not load: reset, so the boot counts as a failed try and, past
# bootlimit, altbootcmd falls back to the previous slot.
echo "shoal: slot ${shoal_slot} did not boot; resetting"
reset
