// Package report holds the benchmark's result records and turns a set of
// runs into the summary: medians per scenario and system, ratios between
// the systems and to the physical bound, a Markdown table and SVG plots of
// remaining bytes over time. It depends on nothing but the standard
// library, so the summary can be recomputed from saved run files.
package report
