package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

// waitReady returns once the server is ready for tests: /readyz is ok, and
// every established custom resource can be watched.
//
// /readyz alone is not enough after a restart: the watch cache of each
// existing CRD starts only after it, and until it has loaded, WATCH
// requests get 429 "storage is (re)initializing" (about half a second
// here). All requests are made as a real client: client cert, CA check.
func waitReady(ctx context.Context, serverURL, certDir string, errCh <-chan error) error {
	tlsCfg, err := clientTLS(certDir)
	if err != nil {
		return err
	}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg}}
	defer client.CloseIdleConnections()
	deadline := time.After(60 * time.Second)
	for {
		err = probe(client, serverURL)
		if err == nil {
			return nil
		}
		select {
		case err := <-errCh:
			return fmt.Errorf("apiserver exited before ready: %v", err)
		case <-ctx.Done():
			return <-errCh // stopped during startup: wait for the server to wind down
		case <-deadline:
			return fmt.Errorf("not ready after 60s: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func probe(client *http.Client, serverURL string) error {
	status := func(path string) (int, error) {
		resp, err := client.Get(serverURL + path)
		if err != nil {
			return 0, err
		}
		// For a watch, the status arrives before any event: no need to read on.
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	if code, err := status("/readyz"); err != nil || code != http.StatusOK {
		return fmt.Errorf("/readyz: HTTP %d, %v", code, err)
	}

	resp, err := client.Get(serverURL + "/apis/apiextensions.k8s.io/v1/customresourcedefinitions")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("listing CRDs: HTTP %d", resp.StatusCode)
	}
	var crds struct {
		Items []struct {
			Spec struct {
				Group    string
				Names    struct{ Plural string }
				Versions []struct {
					Name   string
					Served bool
				}
			}
			Status struct {
				Conditions []struct{ Type, Status string }
			}
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&crds); err != nil {
		return err
	}
	for _, crd := range crds.Items {
		established := false
		for _, c := range crd.Status.Conditions {
			established = established || (c.Type == "Established" && c.Status == "True")
		}
		if !established { // never will be, perhaps (e.g. a name clash): not ours to wait for
			continue
		}
		for _, v := range crd.Spec.Versions {
			if !v.Served {
				continue
			}
			path := fmt.Sprintf("/apis/%s/%s/%s?watch=true&resourceVersion=0&timeoutSeconds=1", crd.Spec.Group, v.Name, crd.Spec.Names.Plural)
			if code, err := status(path); err != nil || code != http.StatusOK {
				return fmt.Errorf("watch %s: HTTP %d, %v", path, code, err)
			}
		}
	}
	return nil
}
