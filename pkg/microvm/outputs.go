package microvm

import (
	"fmt"
	"strings"
)

// outputs collects the files the guest left under /output.
func (vm *VM) outputs() ([]Output, []Rejected) {
	outs, rej := vm.fs.Outputs(vm.cfg.MaxOutputBytes, vm.cfg.MaxOutputFiles)
	var o []Output
	for _, f := range outs {
		o = append(o, Output{Name: f.Name, Mode: f.Mode, Data: f.Data})
	}
	var r []Rejected
	for _, x := range rej {
		r = append(r, Rejected{Name: x.Name, Reason: x.Reason})
	}
	return o, r
}

// procFiles are the /proc files generated from the VM's state.
func (vm *VM) procFiles() map[string]func() []byte {
	return map[string]func() []byte{
		"self/maps": func() []byte { return vm.mm.maps() },
		"meminfo": func() []byte {
			used, _ := vm.hv.MemoryStats()
			total := vm.cfg.Memory / 1024
			free := (vm.cfg.Memory - used) / 1024
			return fmt.Appendf(nil, "MemTotal: %8d kB\nMemFree: %8d kB\nMemAvailable: %8d kB\n", total, free, free)
		},
		"cpuinfo": func() []byte {
			var b strings.Builder
			for i := 0; i < min(vm.cfg.MaxVCPUs, 2); i++ {
				fmt.Fprintf(&b, "processor\t: %d\nvendor_id\t: Isolator\nmodel name\t: micro VM vCPU\n\n", i)
			}
			return []byte(b.String())
		},
		"self/status": func() []byte {
			vm.threadMu.Lock()
			n := len(vm.threads)
			vm.threadMu.Unlock()
			return fmt.Appendf(nil, "Name:\t%s\nPid:\t%d\nPPid:\t0\nUid:\t%d\t%d\t%d\t%d\nThreads:\t%d\n",
				baseName(vm.cfg.Program), guestPID, guestUID, guestUID, guestUID, guestUID, n)
		},
	}
}

func baseName(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[i+1:]
	}
	return p
}
