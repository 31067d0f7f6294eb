(()=>{self.addEventListener("message",s=>{let e=Math.max(0,Math.min(1e3,Number(s.data&&s.data.ms)||0));setTimeout(()=>self.postMessage({type:"tick"}),e)});})();
