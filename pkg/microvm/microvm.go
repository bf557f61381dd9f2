// Package microvm runs one Linux x86-64 ELF program in a throwaway KVM micro VM.
//
// The guest program runs natively at CPL3 inside a VM built by package kvmhv; there is no
// guest kernel. Every system call the program makes leaves the VM and is served here, in Go,
// by a deny-by-default Linux personality: a small in-memory view of files (a read-only guest
// image, the inputs, bounded scratch space), anonymous and file-backed memory, threads,
// futexes, signals to itself, time and identity. Anything not implemented fails with ENOSYS
// and is counted; network sockets fail with EACCES.
//
// A VM is created with New from a Config, run once with Run, and destroyed with Close, which
// releases its guest memory, vCPU threads and file descriptors.
package microvm

import (
	"io"
	"time"

	"github.com/isolator-dev/isolator/pkg/image"
	"github.com/isolator-dev/isolator/pkg/kvmhv"
)

// Input is a host file made visible read-only to the guest as /input/<Name>.
type Input struct {
	Name     string // base name inside /input; must be a plain file name
	HostPath string // host file, opened read-only without following a final symlink
}

// Config describes one micro VM. The zero value of every limit selects its default.
type Config struct {
	KVM     *kvmhv.System // open /dev/kvm shared by many VMs; nil opens one for this VM
	Pool    *Pool         // VMs made ahead of need; nil creates this one on demand (see Pool)
	Image   *image.Image  // read-only root file tree of the guest; required
	Program string        // guest path of the ELF program to run; required
	Args    []string      // argv; Args[0] defaults to Program
	Env     []string      // environment, "KEY=value"
	Dir     string        // working directory; default /work
	Inputs  []Input

	Stdin  io.Reader // nil reads as /dev/null
	Stdout io.Writer // nil discards
	Stderr io.Writer // nil discards

	Memory   int64         // hard cap on guest memory in bytes; default 256 MiB
	Timeout  time.Duration // wall-clock limit; 0 means none
	CPUTime  time.Duration // limit on guest CPU time summed over threads; 0 means none
	MaxVCPUs int           // threads the guest may run at once (each has a vCPU; an exited thread's is reused); default DefaultMaxVCPUs

	ScratchBytes   int64 // bound on /tmp, /work and /output together; default 64 MiB
	MaxOutputBytes int64 // bound on the files returned from /output; default 64 MiB
	MaxOutputFiles int   // bound on the number of files returned; default 256

	// NoVDSO leaves the vDSO out of the guest: every time call is then a system call
	// served by the VMM. By default the guest gets one where the host's TSC can serve as
	// a clock (kvmhv.System.GuestTSC; see vdso.go).
	NoVDSO bool
}

// Output is a regular file the guest wrote under /output.
type Output struct {
	Name string // sanitized relative name, e.g. "page-1.png" or "dir/report.txt"
	Mode uint32 // permission bits
	Data []byte
}

// Rejected names a file under /output that was not returned, and why.
type Rejected struct {
	Name   string
	Reason string
}

// Result is the outcome of a micro VM run.
type Result struct {
	ExitCode int    // exit status of the guest program, or 128+Signal
	Signal   int    // signal that ended the program (e.g. 11 for SIGSEGV), or 0
	TimedOut bool   // the wall-clock or CPU limit ended the program
	Killed   bool   // Kill or context cancellation ended the program
	Reason   string // human-readable reason when Signal != 0 or the VM was stopped

	Outputs  []Output
	Rejected []Rejected
	Stats    Stats
}

// Stats are per-VM counters.
type Stats struct {
	Exits          map[string]uint64 `json:"exits"`           // VM exits by reason
	Syscalls       map[string]uint64 `json:"syscalls"`        // syscalls served, by name
	Denied         map[string]uint64 `json:"denied"`          // syscalls refused (ENOSYS/EACCES), by name; each call is in Syscalls or here, never both
	Wall           time.Duration     `json:"wall_ns"`         // from New to the program's end (creation included, teardown not)
	CPU            time.Duration     `json:"cpu_ns"`          // CPU time of the vCPU threads
	PeakMemory     int64             `json:"peak_memory"`     // peak guest memory in use, bytes
	Threads        int               `json:"threads"`         // guest threads created, including the first
	SyscallCount   uint64            `json:"syscall_count"`   // syscalls served in all
	DeniedCount    uint64            `json:"denied_count"`    // syscalls refused in all
	SignalsDropped int64             `json:"signals_dropped"` // signals to itself that were caught or ignored, not delivered
	BytesCopiedIn  int64             `json:"bytes_copied_in"` // bytes copied from the VMM into guest memory
	BytesCopiedOut int64             `json:"bytes_copied_out"`
	Pooled         bool              `json:"pooled,omitempty"` // the VM was made ahead of need by a Pool
	// GuestClock says the guest's vDSO told the time itself, without a system call, for
	// CLOCK_REALTIME, CLOCK_MONOTONIC(_RAW, _COARSE), CLOCK_REALTIME_COARSE and
	// CLOCK_BOOTTIME; false when it had no vDSO or its clock could not be started.
	GuestClock bool `json:"guest_clock"`
}
