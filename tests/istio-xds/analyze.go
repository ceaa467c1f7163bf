package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"

	"istio.io/istio/pkg/config/analysis"
	"istio.io/istio/pkg/config/analysis/analyzers/envoyfilter"
	"istio.io/istio/pkg/config/analysis/local"
	"istio.io/istio/pkg/config/resource"
)

// runAnalyze runs what `istioctl analyze -f FILE` runs for EnvoyFilters (istioctl's local
// analyzer with Istio's EnvoyFilter analyzer) and prints its messages as JSON:
// [{"code": "IST0155", "level": "Warning", "text": "..."}].
func runAnalyze(args []string) error {
	fs := flag.NewFlagSet("analyze", flag.ExitOnError)
	_ = fs.Parse(args)
	if fs.NArg() == 0 {
		return fmt.Errorf("no files")
	}
	sa := local.NewSourceAnalyzer(analysis.Combine("snp", &envoyfilter.EnvoyPatchAnalyzer{}),
		resource.Namespace("istio-system"), resource.Namespace("istio-system"), nil)
	var sources []local.ReaderSource
	for _, path := range fs.Args() {
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		sources = append(sources, local.ReaderSource{Name: path, Reader: f})
	}
	if err := sa.AddReaderKubeSource(sources); err != nil {
		return err
	}
	cancel := make(chan struct{})
	res, err := sa.Analyze(cancel)
	if err != nil {
		return err
	}
	out := []map[string]string{}
	for _, m := range res.Messages {
		out = append(out, map[string]string{"code": m.Type.Code(), "level": m.Type.Level().String(), "text": m.String()})
	}
	return json.NewEncoder(os.Stdout).Encode(out)
}
