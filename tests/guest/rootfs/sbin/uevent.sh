#!/bin/sh
# Run by "busybox uevent" once per kernel uevent, with the event in the
# environment. Reports block, net and pci events on the serial port:
#   GUEST-UEVENT <ACTION> <SUBSYSTEM> <DEVNAME, or DEVPATH if no DEVNAME>
case "$SUBSYSTEM" in
block | net | pci) ;;
*) exit 0 ;;
esac
echo "GUEST-UEVENT $ACTION $SUBSYSTEM ${DEVNAME:-$DEVPATH}" >/dev/ttyS0
