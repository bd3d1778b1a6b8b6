#!/usr/bin/env python3
"""Fails when a crate declares a dependency its code never names (the workspace's stand-in
for rustc's `unused_crate_dependencies`, which fires for every test target that does not
use every dependency of its package). A dependency kept only for its features goes in
ALLOWED with the reason."""
import sys,re,os,glob
os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
# (crate dir, dependency): why it stays although no code names it.
ALLOWED = {
    ('crates/detect', 'argmin-math'): "feature carrier: argmin's Vec<f64> math",
    ('crates/sentinel', 'argmin-math'): "feature carrier: argmin's Vec<f64> math",
}
bad=0
for c in sorted(glob.glob('crates/*')):
    toml=open(os.path.join(c,'Cargo.toml')).read()
    def section(pat):
        out=[]
        for m in re.finditer(r'^\['+pat+r'\]\n(.*?)(?=^\[|\Z)', toml, re.S|re.M):
            out+=[l.split('=')[0].strip().split('.')[0] for l in m.group(1).splitlines() if '=' in l and not l.strip().startswith('#')]
        return out
    deps=section(r'dependencies')+section(r"target\.[^\]]*\.dependencies")
    src=''.join(open(f).read() for f in glob.glob(os.path.join(c,'src','**','*.rs'),recursive=True))
    for d in deps:
        if (c, d) not in ALLOWED and not re.search(r'\b'+d.replace('-','_')+r'\b', src):
            print(f'{c}/Cargo.toml: dependency `{d}` is not used by its code; remove it', file=sys.stderr); bad+=1
    allsrc=src+''.join(open(f).read() for f in glob.glob(os.path.join(c,'tests','**','*.rs'),recursive=True)+glob.glob(os.path.join(c,'benches','**','*.rs'),recursive=True)+glob.glob(os.path.join(c,'examples','**','*.rs'),recursive=True))
    for d in section(r'dev-dependencies'):
        if not re.search(r'\b'+d.replace('-','_')+r'\b', allsrc):
            print(f'{c}/Cargo.toml: dev-dependency `{d}` is not used by its tests; remove it', file=sys.stderr); bad+=1
sys.exit(1 if bad else 0)
