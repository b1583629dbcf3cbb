// Command validate proves Herald's Helm chart, dashboards and alerts against
// the real thing, offline:
//
//	validate manifests [-external-secret NAME]... RENDERED.yaml...
//	    decode every document strictly into the Kubernetes 1.33 API types
//	    (custom resources into their upstream schema subset) and check
//	    references across documents.
//	validate run -bin DIR [-scale-up R5.yaml -scale-down R3.yaml] RENDERED.yaml
//	    check every flag and environment variable the chart passes to a
//	    Herald container against the real binary's --help, then run the
//	    rendered pods as local processes (service names mapped to loopback
//	    ports, volumes to temporary directories) until every probe passes;
//	    optionally walk a scale-up and a scale-down through the rendered
//	    membership Jobs.
//	validate scrape -bin DIR -rules alerts.yaml
//	    start `herald dev` and a real Prometheus server scraping it, publish,
//	    and check that the publish-rate query returns what was published.
//
// Every subcommand exits 1 with one line per problem.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

	"sigs.k8s.io/yaml"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "manifests":
		err = manifestsCmd(os.Args[2:])
	case "run":
		err = runCmd(os.Args[2:])
	case "scrape":
		err = scrapeCmd(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "validate %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: validate manifests|run|scrape [flags] ...")
	os.Exit(2)
}

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func manifestsCmd(args []string) error {
	fs := flag.NewFlagSet("manifests", flag.ExitOnError)
	var external listFlag
	fs.Var(&external, "external-secret", "a Secret the user provides (not rendered); repeatable")
	rulesOut := fs.String("write-rules", "", "write the groups of every PrometheusRule to this file, for promtool")
	fs.Parse(args)
	if fs.NArg() == 0 {
		return fmt.Errorf("no rendered manifests given")
	}
	problems := 0
	// Each file is one render; references are checked within it.
	for _, path := range fs.Args() {
		objects, errs := LoadManifests([]string{path})
		if len(errs) == 0 {
			errs = CheckBundle(objects, external)
		}
		for _, e := range errs {
			fmt.Fprintln(os.Stderr, e)
		}
		if len(errs) > 0 {
			problems += len(errs)
			continue
		}
		if *rulesOut != "" {
			if err := writeRules(objects, *rulesOut); err != nil {
				return err
			}
		}
		fmt.Printf("ok %s: %d objects valid against Kubernetes %s (%s)\n", path, len(objects), KubernetesVersion, sortedKinds(objects))
	}
	if problems > 0 {
		return fmt.Errorf("%d problem(s)", problems)
	}
	return nil
}

// writeRules saves the rule groups of the rendered PrometheusRules as a
// Prometheus rule file, so promtool checks what the operator would load.
func writeRules(objects []Object, path string) error {
	var groups []RuleGroup
	for _, o := range objects {
		if r, ok := o.Value.(*PrometheusRule); ok {
			groups = append(groups, r.Spec.Groups...)
		}
	}
	if len(groups) == 0 {
		return fmt.Errorf("-write-rules: the render has no PrometheusRule")
	}
	out, err := yaml.Marshal(map[string]any{"groups": groups})
	if err != nil {
		return err
	}
	return os.WriteFile(path, out, 0o644)
}
