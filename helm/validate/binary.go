package main

// What a Herald binary accepts, read from its own --help: long flags (and
// whether each takes a value) and the HERALD_* environment twins. A flag or
// variable the chart passes that is not listed here would either stop the
// container (clap rejects unknown flags) or be silently ignored (unknown
// variables): both fail the check.

import (
	"fmt"
	"os/exec"
	"regexp"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Interface is what one binary accepts.
type Interface struct {
	Binary string
	Flags  map[string]bool // long flag name -> takes a value
	Env    map[string]bool
}

var (
	helpFlag = regexp.MustCompile(`(?m)^\s+(?:-\w, )?--([a-z0-9][a-z0-9-]*)( <[^>]+>)?`)
	helpEnv  = regexp.MustCompile(`\[env: ([A-Z0-9_]+)[=\]]`)
)

// ReadInterface runs `<bin> <subcommand...> --help`.
func ReadInterface(bin string, sub ...string) (*Interface, error) {
	out, err := exec.Command(bin, append(sub, "--help")...).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("%s --help: %v\n%s", bin, err, out)
	}
	iface := &Interface{Binary: bin, Flags: map[string]bool{}, Env: map[string]bool{}}
	for _, m := range helpFlag.FindAllStringSubmatch(string(out), -1) {
		iface.Flags[m[1]] = m[2] != ""
	}
	for _, m := range helpEnv.FindAllStringSubmatch(string(out), -1) {
		iface.Env[m[1]] = true
	}
	if len(iface.Flags) == 0 {
		return nil, fmt.Errorf("%s --help lists no flags:\n%s", bin, out)
	}
	return iface, nil
}

// CheckArgs reports every argument the binary does not accept. The daemons
// take no positional arguments, so anything but a known flag (and the
// value of a flag that takes one) is an error.
func (i *Interface) CheckArgs(args []string) []string {
	var bad []string
	for n := 0; n < len(args); n++ {
		a := args[n]
		if !strings.HasPrefix(a, "--") {
			bad = append(bad, fmt.Sprintf("%q is not a flag", a))
			continue
		}
		name, _, hasValue := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		takes, ok := i.Flags[name]
		switch {
		case !ok:
			bad = append(bad, fmt.Sprintf("--%s is not a flag of %s", name, i.Binary))
		case hasValue && !takes:
			bad = append(bad, fmt.Sprintf("--%s takes no value", name))
		case !hasValue && takes:
			n++ // the value follows as the next argument
			if n >= len(args) {
				bad = append(bad, fmt.Sprintf("--%s needs a value", name))
			}
		}
	}
	return bad
}

// CheckEnv reports every variable of the container the binary does not
// read: a HERALD_* twin it does not list, or any other variable that no
// $(VAR) in the command line uses.
func (i *Interface) CheckEnv(c corev1.Container) []string {
	used := map[string]bool{}
	for _, a := range append(append([]string{}, c.Command...), c.Args...) {
		for _, m := range varRef.FindAllStringSubmatch(a, -1) {
			used[m[1]] = true
		}
	}
	var bad []string
	for _, e := range c.Env {
		if i.Env[e.Name] || used[e.Name] {
			continue
		}
		bad = append(bad, fmt.Sprintf("env %s is not read by %s", e.Name, i.Binary))
	}
	if len(c.EnvFrom) > 0 {
		bad = append(bad, "envFrom passes variables that cannot be checked")
	}
	return bad
}
