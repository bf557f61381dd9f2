package kvmhv

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ErrNoGuestTSC means guest code cannot tell time from its time-stamp counter on this
// host; System.GuestTSC says why.
var ErrNoGuestTSC = errors.New("guest TSC unusable as a clock")

// clocksourcePath names the host kernel's clock source.
const clocksourcePath = "/sys/devices/system/clocksource/clocksource0/current_clocksource"

// TSCReading pairs a reading of a vCPU's time-stamp counter (what `rdtsc` returns in the
// guest) with the host's CLOCK_MONOTONIC at the same instant, within the few microseconds
// the read takes. With the counter's frequency, guest code can then tell the host's time
// without leaving the VM.
type TSCReading struct {
	TSC       uint64        // the guest's time-stamp counter
	Monotonic time.Duration // host CLOCK_MONOTONIC when TSC was read (the middle of the read)
	KHz       uint64        // the guest counter's frequency, in kHz (KVM_GET_TSC_KHZ)
}

// GuestTSC reports whether a guest's `rdtsc` can serve as a clock on this host, and if not,
// why. It can when the host kernel itself keeps time with the TSC (an invariant counter,
// the same on every CPU), KVM reports the guest counter's frequency, and the counter the
// probe guest read with `rdtsc` lay between two KVM_GET_MSRS reads of its vCPU's
// IA32_TIME_STAMP_COUNTER (so the VMM reads what the guest reads, whatever offset or
// scaling the host applies).
func (s *System) GuestTSC() (bool, string) {
	return s.tscWhy == "", s.tscWhy
}

// hostTSCReason is why the host's TSC cannot serve guests as a clock, or "".
func (s *System) hostTSCReason() string {
	if ok, _ := ioctl(s.fd, kvmCheckExtension, capGetTSCKHz); ok == 0 {
		return "KVM does not report the guest TSC frequency (no KVM_CAP_GET_TSC_KHZ)"
	}
	return clocksourceReason()
}

// clocksourceReason is why the host kernel's clock source is not the TSC, or "".
func clocksourceReason() string {
	b, err := os.ReadFile(clocksourcePath)
	if err != nil {
		return fmt.Sprintf("host clock source unknown: %v", err)
	}
	if cs := strings.TrimSpace(string(b)); cs != "tsc" {
		return fmt.Sprintf("the host kernel keeps time with %q, not the TSC", cs)
	}
	return ""
}

// readTSC reads the vCPU's IA32_TIME_STAMP_COUNTER through KVM_GET_MSRS.
func (v *VCPU) readTSC() (uint64, error) {
	m := msrs{NMSRs: 1}
	m.Entries[0].Index = msrTSC
	if n, err := ioctlPtrN(v.fd, kvmGetMSRs, &m); err != nil || n != 1 {
		return 0, fmt.Errorf("KVM_GET_MSRS IA32_TSC: read %d of 1: %v", n, err)
	}
	return m.Entries[0].Data, nil
}

// ReadTSC returns a TSCReading of the vCPU. It fails with ErrNoGuestTSC where GuestTSC
// says no. Call it from the vCPU's thread while the vCPU is not running.
func (v *VCPU) ReadTSC() (TSCReading, error) {
	if ok, why := v.vm.sys.GuestTSC(); !ok {
		return TSCReading{}, fmt.Errorf("%w: %s", ErrNoGuestTSC, why)
	}
	// The host kernel may have given up on the TSC since Open (it marks an unstable TSC
	// and switches clock source at run time).
	if why := clocksourceReason(); why != "" {
		return TSCReading{}, fmt.Errorf("%w: %s", ErrNoGuestTSC, why)
	}
	khz, err := ioctl(v.fd, kvmGetTSCKHz, 0)
	if err != nil || khz == 0 {
		return TSCReading{}, fmt.Errorf("%w: KVM_GET_TSC_KHZ: %d, %v", ErrNoGuestTSC, khz, err)
	}
	var before, after unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &before)
	tsc, err := v.readTSC()
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &after)
	if err != nil {
		return TSCReading{}, fmt.Errorf("%w: %w", ErrNoGuestTSC, err)
	}
	mid := (before.Nano() + after.Nano()) / 2
	return TSCReading{TSC: tsc, Monotonic: time.Duration(mid), KHz: uint64(khz)}, nil
}

// probeTSCReason checks, on the probe guest's vCPU, that the counter the guest read with
// `rdtsc` (guest, in EDX:EAX when it exited) lies between the VMM's reads before and after
// the run. It returns "" when it does, else why not.
func probeTSCReason(before, guest, after uint64) string {
	if guest < before || guest > after {
		return fmt.Sprintf("the guest read TSC %d with rdtsc, outside the VMM's reads %d..%d of its vCPU's TSC", guest, before, after)
	}
	return ""
}
